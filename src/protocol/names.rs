//! Names and texts: which user and room names are valid, how names are keyed and compared
//! (case, look-alikes), search words, visible text.

use super::{MAX_NAME_BYTES, RESERVED_NAMES};

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// Empty, too long, or a character outside `[A-Za-z0-9_.-]`.
    Invalid,
    /// One of [`RESERVED_NAMES`].
    Reserved,
}

/// Checks a user name against the rules: 1-32 of `[A-Za-z0-9_.-]` with at least one letter or
/// digit, and not one of [`RESERVED_NAMES`] nor a [`look_alike`] of one, so `Server_`, `adm1n`
/// and `sys.tem` are reserved too.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    check_chars(name).ok_or(NameError::Invalid)?;
    if !name.bytes().any(|b| b.is_ascii_alphanumeric()) {
        return Err(NameError::Invalid);
    }
    let looks = look_alike(name);
    if RESERVED_NAMES.iter().any(|r| look_alike(r) == looks) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

fn check_chars(name: &str) -> Option<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    ok.then_some(())
}

/// Who a name is: its ASCII lower case (names are ASCII). Two names with one key are one user
/// (`Alice` and `alice`); two with different keys are two users, however alike they look.
pub fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// What a name looks like, for refusing a *new* name that would pass for someone else's: lower
/// case, the separators `_ . -` dropped, and look-alike letters and digits folded together (`0`/`o`,
/// `1`/`i`/`l`, `3`/`e`, `4`/`a`, `5`/`s`, `7`/`t`, `8`/`b`, `9`/`g`, `rn`/`m`, `vv`/`w`), so `aIice`,
/// `a.lice`, `_alice` and `a1ice` all look like `alice`, `5am` like `sam`, `8ob` like `bob`.
/// Never an identity: two accounts that look alike stay two accounts (see [`name_key`]).
pub fn look_alike(name: &str) -> String {
    let mapped: String = name
        .chars()
        .filter(|c| !matches!(c, '_' | '.' | '-'))
        .map(|c| match c.to_ascii_lowercase() {
            '0' => 'o',
            '1' | 'i' => 'l',
            '3' => 'e',
            '4' => 'a',
            '5' => 's',
            '7' => 't',
            '8' => 'b',
            '9' => 'g',
            c => c,
        })
        .collect();
    mapped.replace("rn", "m").replace("vv", "w")
}

/// Words a search may have (each must match).
pub const MAX_SEARCH_WORDS: usize = 32;

/// The words a search looks for, as the index's tokenizer (unicode61) cuts them: runs of letters
/// and digits. `Err` with the count when there are more than [`MAX_SEARCH_WORDS`].
pub fn search_words(query: &str) -> Result<Vec<&str>, usize> {
    let words: Vec<&str> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.len() > MAX_SEARCH_WORDS {
        return Err(words.len());
    }
    Ok(words)
}

/// Whether a character shows nothing by itself: controls, zero-width and other format
/// characters, fillers and blanks that render as empty space. A message made only of these (and
/// whitespace) says nothing and is refused.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}'
            | '\u{17b5}' | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{2800}' | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}' | '\u{fff9}'..='\u{fffb}'
            | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}

/// Whether `text` has anything visible in it.
pub fn has_visible_text(text: &str) -> bool {
    text.chars().any(|c| !c.is_whitespace() && !is_invisible(c))
}

/// Normalises a room name: an optional leading `#` is dropped, the rest follows the name rules
/// (reserved words aside) and is lower-cased, so `#Rust` and `rust` are one room.
pub fn normalize_room(room: &str) -> Option<String> {
    let bare = room.strip_prefix('#').unwrap_or(room);
    check_chars(bare)?;
    Some(bare.to_ascii_lowercase())
}

/// Whether `text` mentions `name` as `@name` (case-insensitively), not as the start of a longer
/// name: what counts as a mention in a room's unread state.
pub fn mentions_at(text: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let is_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
    let lower = text.to_ascii_lowercase();
    let wanted = format!("@{}", name.to_ascii_lowercase());
    let mut from = 0;
    while let Some(i) = lower[from..].find(&wanted) {
        let start = from + i;
        let end = start + wanted.len();
        let rest = &lower[end..];
        // `@ann.` ends a sentence; `@ann.b` is someone else.
        let after = rest.chars().next().is_none_or(|c| {
            !is_name(c) && (c != '.' || !rest[1..].starts_with(|d: char| is_name(d) || d == '.'))
        });
        let before = lower[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_name(c) && c != '.');
        if after && before {
            return true;
        }
        from = start + 1;
    }
    false
}

/// Most bytes an emoji (a reaction) may have.
pub const MAX_EMOJI_BYTES: usize = 64;

/// Whether `emoji` may be a reaction: one grapheme cluster that is not plain ASCII (👍, 🏳️‍🌈), or
/// a short name like `:ship_it:` (letters, digits, `_`, `+`, `-`), in at most
/// [`MAX_EMOJI_BYTES`] bytes. Else why not.
pub fn valid_emoji(emoji: &str) -> Result<(), String> {
    use unicode_segmentation::UnicodeSegmentation;
    if emoji.len() > MAX_EMOJI_BYTES {
        return Err(format!("an emoji is at most {MAX_EMOJI_BYTES} bytes long"));
    }
    if let Some(name) = emoji.strip_prefix(':').and_then(|e| e.strip_suffix(':')) {
        let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-');
        if !name.is_empty() && name.len() <= 32 && name.chars().all(fine) {
            return Ok(());
        }
    }
    let one = emoji.graphemes(true).count() == 1;
    let shown = emoji
        .chars()
        .all(|c| !c.is_ascii() && !c.is_whitespace() && !c.is_control());
    if one && shown {
        Ok(())
    } else {
        Err("an emoji is one emoji (like 👍) or a short name like :ship_it:".into())
    }
}
