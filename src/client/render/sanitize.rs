//! Making received text safe to show: [`sanitize`] is the only way it reaches a terminal.

/// Strips everything that could control a terminal from text received from the network: C0 and C1
/// control characters, ANSI escape sequences (CSI, OSC, and the rest), DEL, and Unicode bidi
/// overrides and isolates. Tabs and newlines become spaces so every event stays on one line.
/// Characters that show nothing but change what a text is (zero-width spaces, word joiners, tag
/// characters that smuggle ASCII past a reader) are shown as `⟨U+200B⟩` (see [`hidden_at`]).
pub fn sanitize(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if hidden_at(&chars, i - 1) {
            out.push_str(&format!("⟨U+{:04X}⟩", c as u32));
            continue;
        }
        match c {
            '\u{1b}' => match chars.get(i) {
                // CSI: parameters and intermediates up to a final byte in @..~
                Some('[') => {
                    i += 1;
                    while let Some(&c) = chars.get(i) {
                        i += 1;
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC, DCS, SOS, PM, APC: a string ended by BEL or ST (ESC \)
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    i += 1;
                    while let Some(&c) = chars.get(i) {
                        i += 1;
                        if c == '\u{7}' || c == '\u{9c}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.get(i) == Some(&'\\') {
                            i += 1;
                            break;
                        }
                    }
                }
                // Two-character escapes (ESC c, ESC 7, ...): drop both.
                Some(_) => i += 1,
                None => {}
            },
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c if is_bidi_control(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether the character at `i` shows nothing yet changes the text, and so is shown as its code
/// point: zero-width space, word joiner, invisible operators, BOM, Mongolian vowel separator, and
/// tag characters (U+E0000–E007F, which can carry a hidden copy of ASCII text). Zero-width
/// joiners and non-joiners are shown only beside ASCII (where they join nothing; in emoji and in
/// Persian or Indic words they are part of the writing), and tag characters only outside an
/// emoji tag sequence (a subdivision flag: U+1F3F4, tags, U+E007F).
pub fn hidden_at(chars: &[char], i: usize) -> bool {
    let c = chars[i];
    match c {
        '\u{200b}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{180e}' => true,
        '\u{200c}' | '\u{200d}' => {
            let ascii = |c: Option<&char>| c.is_none_or(|c| c.is_ascii());
            ascii(i.checked_sub(1).and_then(|p| chars.get(p))) || ascii(chars.get(i + 1))
        }
        '\u{e0000}'..='\u{e007f}' => {
            // Walk back over the tag run: a flag sequence starts with U+1F3F4 and ends with a
            // cancel tag.
            let start = chars[..i]
                .iter()
                .rposition(|c| !('\u{e0020}'..='\u{e007e}').contains(c))
                .map_or(0, |p| p + 1);
            let base = start.checked_sub(1).map(|p| chars[p]);
            let end = chars[i..]
                .iter()
                .position(|c| *c == '\u{e007f}')
                .map(|p| i + p);
            !(base == Some('\u{1f3f4}') && end.is_some() && start <= i)
        }
        _ => false,
    }
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}')
}

/// Escapes the characters JSON leaves raw but a terminal may act on (C1 controls, bidi controls),
/// so `--json` output is as safe as the formatted output. Valid JSON in, valid JSON out.
pub fn escape_json_for_terminal(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_control() || is_bidi_control(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}
