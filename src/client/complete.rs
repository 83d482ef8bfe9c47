//! Tab completion: nicks in the current room, rooms after `/join` and `/room`, and commands.
//! Repeated Tab cycles through the candidates; any other key starts over.

use super::editor::Editor;
use super::input::COMMANDS;

/// What completion can draw on.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Known {
    /// Members of the current room.
    pub nicks: Vec<String>,
    /// Rooms known to exist.
    pub rooms: Vec<String>,
}

/// The candidates for `word`, the word before the cursor, given the text before it.
pub fn candidates(before: &str, word: &str, known: &Known) -> Vec<String> {
    let first_word = before.trim().is_empty();
    let lower = word.to_ascii_lowercase();
    let matching = |items: &mut dyn Iterator<Item = String>| -> Vec<String> {
        let mut out: Vec<String> = items
            .filter(|c| c.to_ascii_lowercase().starts_with(&lower))
            .collect();
        out.sort_by_key(|c| c.to_ascii_lowercase());
        out.dedup();
        out
    };
    if first_word && word.starts_with('/') {
        return matching(&mut COMMANDS.iter().map(|(c, _, _)| format!("{c} ")));
    }
    let command = before.split_whitespace().next().unwrap_or("");
    if matches!(command, "/join" | "/room" | "/leave" | "/who")
        && before.split_whitespace().count() == 1
    {
        let bare = word.trim_start_matches('#').to_ascii_lowercase();
        let mut rooms: Vec<String> = known
            .rooms
            .iter()
            .filter(|r| r.starts_with(&bare))
            .map(|r| format!("#{r} "))
            .collect();
        rooms.sort();
        rooms.dedup();
        return rooms;
    }
    if word.is_empty() {
        return Vec::new();
    }
    let suffix = if first_word { ": " } else { " " };
    matching(&mut known.nicks.iter().map(|n| format!("{n}{suffix}")))
}

/// Tab's state between presses.
#[derive(Debug, Default)]
pub struct Completer {
    /// (where the completed word starts, the candidates, the one shown).
    cycle: Option<(usize, Vec<String>, usize)>,
}

impl Completer {
    /// Tab: completes the word before the cursor, or, pressed again, replaces the completion with
    /// the next candidate. False when there is nothing to complete.
    pub fn tab(&mut self, editor: &mut Editor, known: &Known) -> bool {
        if let Some((start, list, i)) = &mut self.cycle
            && editor.text().get(*start..editor.cursor()) == Some(list[*i].as_str())
        {
            *i = (*i + 1) % list.len();
            editor.replace_before_cursor(*start, &list[*i]);
            return true;
        }
        let (start, word) = editor.word_before_cursor();
        let list = candidates(&editor.text()[..start], word, known);
        let Some(first) = list.first().cloned() else {
            self.cycle = None;
            return false;
        };
        editor.replace_before_cursor(start, &first);
        self.cycle = Some((start, list, 0));
        true
    }

    /// Any other key: the next Tab starts over.
    pub fn reset(&mut self) {
        self.cycle = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Known {
        Known {
            nicks: vec!["alice".into(), "Albert".into(), "bob".into()],
            rooms: vec!["rust".into(), "random".into(), "lobby".into()],
        }
    }

    #[test]
    fn completes_nicks_rooms_and_commands() {
        let k = known();
        assert_eq!(candidates("", "al", &k), ["Albert: ", "alice: "]);
        assert_eq!(candidates("hi ", "b", &k), ["bob "]);
        assert_eq!(candidates("/join ", "r", &k), ["#random ", "#rust "]);
        assert_eq!(candidates("/room ", "#ru", &k), ["#rust "]);
        assert_eq!(candidates("", "/jo", &k), ["/join "]);
        assert_eq!(candidates("", "/h", &k), ["/help ", "/history "]);
        assert!(candidates("hi ", "", &k).is_empty());
        assert!(candidates("", "zed", &k).is_empty());
    }

    #[test]
    fn repeated_tab_cycles_and_other_keys_reset() {
        let k = known();
        let mut c = Completer::default();
        let mut e = Editor::new();
        e.insert("al");
        assert!(c.tab(&mut e, &k));
        assert_eq!(e.text(), "Albert: ");
        assert!(c.tab(&mut e, &k));
        assert_eq!(e.text(), "alice: ");
        assert!(c.tab(&mut e, &k));
        assert_eq!(e.text(), "Albert: ");
        c.reset();
        e.insert("hi b");
        assert!(c.tab(&mut e, &k));
        assert_eq!(e.text(), "Albert: hi bob ");
        e.insert("zz");
        assert!(!c.tab(&mut e, &k));
    }
}
