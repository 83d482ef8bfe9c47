//! The input line: a pure text editor with a cursor and a history, no terminal in sight.
//!
//! The cursor moves over grapheme clusters (a letter and its combining marks are one step) and the
//! view is measured in display columns (a CJK character or an emoji takes two), so what the
//! terminal shows and where its cursor sits always agree.

use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

/// Lines kept in the history.
const HISTORY_LINES: usize = 200;
/// Bytes kept in the history, at most.
const HISTORY_BYTES: usize = 256 * 1024;

/// The line being typed, its cursor, and the lines typed before.
#[derive(Debug, Default, Clone)]
pub struct Editor {
    text: String,
    /// Byte offset of the cursor, always at a grapheme boundary.
    cursor: usize,
    history: Vec<String>,
    /// Index into `history` while browsing it with ↑/↓.
    browsing: Option<usize>,
    /// The line being typed when browsing started.
    draft: String,
}

/// What the terminal shows of the line: the visible text and the cursor's column in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The visible part of the line.
    pub text: String,
    /// The cursor's display column within `text`.
    pub cursor: usize,
}

impl Editor {
    /// An empty line.
    pub fn new() -> Editor {
        Editor::default()
    }

    /// The line as typed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the line is empty.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The cursor's byte offset.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    fn edited(&mut self) {
        self.browsing = None;
    }

    /// Inserts text at the cursor (a typed character, or a pasted line).
    pub fn insert(&mut self, s: &str) {
        self.text.insert_str(self.cursor, s);
        self.cursor += s.len();
        self.edited();
    }

    /// Replaces the whole line.
    pub fn set(&mut self, s: &str) {
        self.text = s.to_string();
        self.cursor = self.text.len();
    }

    fn prev_boundary(&self, at: usize) -> usize {
        self.text[..at]
            .grapheme_indices(true)
            .next_back()
            .map_or(0, |(i, _)| i)
    }

    fn next_boundary(&self, at: usize) -> usize {
        self.text[at..]
            .graphemes(true)
            .next()
            .map_or(at, |g| at + g.len())
    }

    /// ←
    pub fn left(&mut self) {
        self.cursor = self.prev_boundary(self.cursor);
    }

    /// →
    pub fn right(&mut self) {
        self.cursor = self.next_boundary(self.cursor);
    }

    /// Home, Ctrl-A.
    pub fn home(&mut self) {
        self.cursor = 0;
    }

    /// End, Ctrl-E.
    pub fn end(&mut self) {
        self.cursor = self.text.len();
    }

    /// Backspace: deletes the grapheme before the cursor.
    pub fn backspace(&mut self) {
        let start = self.prev_boundary(self.cursor);
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
        self.edited();
    }

    /// Delete: deletes the grapheme under the cursor.
    pub fn delete(&mut self) {
        let end = self.next_boundary(self.cursor);
        self.text.replace_range(self.cursor..end, "");
        self.edited();
    }

    /// Where the word before `at` starts (skipping spaces, then non-spaces).
    fn word_start(&self, at: usize) -> usize {
        let before = &self.text[..at];
        let trimmed = before.trim_end_matches(char::is_whitespace);
        trimmed.rfind(char::is_whitespace).map_or(0, |i| {
            i + trimmed[i..].chars().next().map_or(1, char::len_utf8)
        })
    }

    /// Where the word after `at` ends (skipping spaces, then non-spaces).
    fn word_end(&self, at: usize) -> usize {
        let after = &self.text[at..];
        let skipped = after.len() - after.trim_start_matches(char::is_whitespace).len();
        let rest = &after[skipped..];
        at + skipped + rest.find(char::is_whitespace).unwrap_or(rest.len())
    }

    /// Alt-B, Ctrl-←: to the start of the word before the cursor.
    pub fn word_left(&mut self) {
        self.cursor = self.word_start(self.cursor);
    }

    /// Alt-F, Ctrl-→: to the end of the word after the cursor.
    pub fn word_right(&mut self) {
        self.cursor = self.word_end(self.cursor);
    }

    /// Ctrl-W: deletes the word before the cursor.
    pub fn delete_word_back(&mut self) {
        let start = self.word_start(self.cursor);
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
        self.edited();
    }

    /// Ctrl-U: deletes everything before the cursor.
    pub fn delete_to_start(&mut self) {
        self.text.replace_range(..self.cursor, "");
        self.cursor = 0;
        self.edited();
    }

    /// Ctrl-K: deletes everything from the cursor on.
    pub fn delete_to_end(&mut self) {
        self.text.truncate(self.cursor);
        self.edited();
    }

    /// Ctrl-C on a line: clears it.
    pub fn clear(&mut self) {
        self.text.clear();
        self.cursor = 0;
        self.edited();
    }

    /// Enter: takes the line, remembering it in the history (unless blank or a repeat).
    pub fn take(&mut self) -> String {
        let line = std::mem::take(&mut self.text);
        self.cursor = 0;
        self.browsing = None;
        self.draft.clear();
        if !line.trim().is_empty() && self.history.last() != Some(&line) {
            self.history.push(line.clone());
            let mut bytes: usize = self.history.iter().map(String::len).sum();
            while self.history.len() > HISTORY_LINES || bytes > HISTORY_BYTES {
                bytes -= self.history.remove(0).len();
            }
        }
        line
    }

    /// ↑: the previous line from the history.
    pub fn history_back(&mut self) {
        if self.history.is_empty() {
            return;
        }
        let next = match self.browsing {
            None => {
                self.draft = self.text.clone();
                self.history.len() - 1
            }
            Some(i) => i.saturating_sub(1),
        };
        self.browsing = Some(next);
        self.set(&self.history[next].clone());
    }

    /// ↓: the next line from the history, and past the newest, the line being typed.
    pub fn history_forward(&mut self) {
        let Some(i) = self.browsing else { return };
        if i + 1 < self.history.len() {
            self.browsing = Some(i + 1);
            self.set(&self.history[i + 1].clone());
        } else {
            self.browsing = None;
            let draft = std::mem::take(&mut self.draft);
            self.set(&draft);
        }
    }

    /// The word the cursor is at the end of, and where it starts (for completion).
    pub fn word_before_cursor(&self) -> (usize, &str) {
        let start = self.text[..self.cursor]
            .rfind(char::is_whitespace)
            .map_or(0, |i| i + 1);
        (start, &self.text[start..self.cursor])
    }

    /// Replaces the text from `start` to the cursor with `with` (a completion).
    pub fn replace_before_cursor(&mut self, start: usize, with: &str) {
        self.text.replace_range(start..self.cursor, with);
        self.cursor = start + with.len();
    }

    /// What fits in `width` display columns, scrolled so the cursor is visible.
    pub fn view(&self, width: usize) -> View {
        let width = width.max(2);
        let graphemes: Vec<(usize, &str)> = self.text.grapheme_indices(true).collect();
        let at = graphemes
            .iter()
            .position(|(i, _)| *i >= self.cursor)
            .unwrap_or(graphemes.len());
        // Start as far left as lets the cursor (and one column for it) fit.
        let mut start = at;
        let mut used = 1;
        while start > 0 {
            let w = graphemes[start - 1].1.width();
            if used + w > width {
                break;
            }
            used += w;
            start -= 1;
        }
        let cursor: usize = graphemes[start..at].iter().map(|(_, g)| g.width()).sum();
        let mut text = String::new();
        let mut cols = 0;
        for (_, g) in &graphemes[start..] {
            let w = g.width();
            if cols + w > width - 1 && cols >= cursor {
                break;
            }
            cols += w;
            text.push_str(g);
        }
        View { text, cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(s: &str) -> Editor {
        let mut e = Editor::new();
        e.insert(s);
        e
    }

    #[test]
    fn inserts_and_deletes_at_the_cursor() {
        let mut e = typed("helo");
        e.left();
        e.insert("l");
        assert_eq!((e.text(), e.cursor()), ("hello", 4));
        e.home();
        e.delete();
        assert_eq!(e.text(), "ello");
        e.end();
        e.backspace();
        assert_eq!(e.text(), "ell");
        e.backspace();
        e.backspace();
        e.backspace();
        e.backspace();
        assert_eq!((e.text(), e.cursor()), ("", 0));
        e.delete();
        e.left();
        assert_eq!((e.text(), e.cursor()), ("", 0));
    }

    #[test]
    fn word_moves_and_deletes() {
        let mut e = typed("say  hello world");
        e.word_left();
        assert_eq!(&e.text()[e.cursor()..], "world");
        e.word_left();
        assert_eq!(&e.text()[e.cursor()..], "hello world");
        e.word_right();
        assert_eq!(&e.text()[e.cursor()..], " world");
        e.end();
        e.delete_word_back();
        assert_eq!(e.text(), "say  hello ");
        e.delete_word_back();
        assert_eq!(e.text(), "say  ");
        e.home();
        e.word_right();
        e.delete_to_end();
        assert_eq!(e.text(), "say");
        e.insert(" more");
        e.left();
        e.left();
        e.delete_to_start();
        assert_eq!((e.text(), e.cursor()), ("re", 0));
    }

    #[test]
    fn history_browses_back_and_forward_to_the_draft() {
        let mut e = Editor::new();
        for line in ["one", "two", "two", "  "] {
            e.insert(line);
            e.take();
        }
        e.insert("draft");
        e.history_back();
        assert_eq!(e.text(), "two");
        e.history_back();
        assert_eq!(e.text(), "one");
        e.history_back();
        assert_eq!(e.text(), "one", "stops at the oldest");
        e.history_forward();
        assert_eq!(e.text(), "two");
        e.history_forward();
        assert_eq!(e.text(), "draft");
        e.history_forward();
        assert_eq!(e.text(), "draft");
    }

    #[test]
    fn combining_marks_are_one_step_and_take_no_column() {
        // "e" + combining acute, then "x".
        let mut e = typed("e\u{301}x");
        assert_eq!(e.view(80).cursor, 2);
        e.left();
        e.left();
        assert_eq!(e.cursor(), 0);
        e.right();
        assert_eq!(e.cursor(), "e\u{301}".len());
        assert_eq!(e.view(80).cursor, 1);
        e.end();
        e.left();
        e.backspace();
        assert_eq!(e.text(), "x", "backspace removes the letter with its mark");
    }

    #[test]
    fn wide_characters_take_two_columns() {
        let mut e = typed("日本x");
        assert_eq!(e.view(80).cursor, 5);
        e.left();
        assert_eq!(e.view(80).cursor, 4);
        e.left();
        assert_eq!(e.view(80).cursor, 2);
        let e = typed("🙂🙂");
        assert_eq!(e.view(80).cursor, 4);
    }

    #[test]
    fn the_view_scrolls_to_keep_the_cursor_visible() {
        let mut e = typed("abcdefghij");
        let v = e.view(5);
        assert_eq!(
            v,
            View {
                text: "ghij".into(),
                cursor: 4
            }
        );
        e.home();
        let v = e.view(5);
        assert_eq!(
            v,
            View {
                text: "abcd".into(),
                cursor: 0
            }
        );
        // A wide character that does not fit at the edge is not half drawn.
        let e = typed("ab日本");
        let v = e.view(4);
        assert_eq!(v.cursor, 2);
        assert_eq!(v.text, "本");
    }

    #[test]
    fn completion_replaces_the_word_before_the_cursor() {
        let mut e = typed("hi al");
        let (start, word) = e.word_before_cursor();
        assert_eq!((start, word), (3, "al"));
        e.replace_before_cursor(start, "alice: ");
        assert_eq!(e.text(), "hi alice: ");
        assert_eq!(e.cursor(), e.text().len());
    }
}
