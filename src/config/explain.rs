//! figment's errors, said in the operator's terms: the dotted key, where it was set (file and line,
//! or the environment variable), what TOML type is wanted and what was found, and "did you mean"
//! for a misspelt key. figment's own text speaks of profiles (`default.server.port`) and Rust
//! types (`expected u16`).

use std::path::Path;

use figment::Source;
use figment::error::{Actual, Kind};

/// One line per error in `err` (figment may report several). `file` is the TOML file that was
/// merged, with its text, for line numbers.
pub(super) fn explain(err: figment::Error, file: Option<(&Path, &str)>) -> String {
    err.into_iter()
        .map(|e| one(&e, file))
        .collect::<Vec<_>>()
        .join("\n")
}

fn one(e: &figment::Error, file: Option<(&Path, &str)>) -> String {
    let path: Vec<String> = e.path.iter().map(|p| p.to_ascii_lowercase()).collect();
    let key = path.join(".");
    let what = match &e.kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => format!(
            "`{key}` must be {}, found {}",
            wanted(expected),
            found(actual)
        ),
        Kind::UnknownField(name, known) => {
            let section = &path[..path.len().saturating_sub(1)];
            let full = |k: &str| {
                if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{}.{k}", section.join("."))
                }
            };
            let name = name.to_ascii_lowercase();
            let what = if section.is_empty() { "section" } else { "key" };
            match closest(&name, known) {
                Some(guess) => format!(
                    "unknown {what} `{}`: did you mean `{}`?",
                    full(&name),
                    full(guess)
                ),
                None if section.is_empty() => {
                    format!("unknown section `{name}`; the sections are {}", list(known))
                }
                None => format!(
                    "unknown key `{}`; the keys of [{}] are {}",
                    full(&name),
                    section.join("."),
                    list(known)
                ),
            }
        }
        Kind::UnknownVariant(value, known) => {
            let hint = closest(&value.to_ascii_lowercase(), known)
                .map(|g| format!(" (did you mean \"{g}\"?)"))
                .unwrap_or_default();
            format!(
                "`{key}` must be one of {}, found the string \"{value}\"{hint}",
                list(known)
            )
        }
        Kind::Message(text) if key.is_empty() => text.trim_end().to_string(),
        Kind::Message(text) => format!("`{key}`: {}", text.trim_end()),
        other => format!("`{key}`: {other}"),
    };
    format!("{what}{}", place(e, &path, file))
}

/// Where the value came from: ` (chat.toml line 3)` or ` (environment variable CHATD_X__Y)`.
fn place(e: &figment::Error, path: &[String], file: Option<(&Path, &str)>) -> String {
    let Some(meta) = &e.metadata else {
        return String::new();
    };
    match &meta.source {
        Some(Source::File(source)) => {
            let line = file
                .filter(|(f, _)| *f == source.as_path() || source.ends_with(f))
                .and_then(|(_, text)| line_of(text, path));
            match line {
                Some(n) => format!(" ({} line {n})", source.display()),
                None => format!(" (in {})", source.display()),
            }
        }
        _ if meta.name.contains("environment") && !path.is_empty() => format!(
            " (environment variable CHATD_{})",
            path.join("__").to_ascii_uppercase()
        ),
        _ => String::new(),
    }
}

/// The 1-based line of `path` (`[section]` then `key = …`, or a dotted key) in a TOML text.
fn line_of(text: &str, path: &[String]) -> Option<usize> {
    let (key, section) = path.split_last()?;
    let section = section.join(".");
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if section.is_empty() && current == *key {
                return Some(i + 1);
            }
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim().trim_matches('"').to_ascii_lowercase();
        let dotted = if current.is_empty() {
            name.clone()
        } else {
            format!("{current}.{name}")
        };
        let want = if section.is_empty() {
            key.clone()
        } else {
            format!("{section}.{key}")
        };
        if dotted == want {
            return Some(i + 1);
        }
    }
    None
}

/// figment's (serde's) expected type, as a TOML value.
fn wanted(expected: &str) -> String {
    match expected {
        "u8" => "an integer 0–255".into(),
        "u16" => "an integer 0–65535".into(),
        "u32" => "an integer 0–4294967295".into(),
        "u64" | "usize" => "a whole number (0 or more)".into(),
        "i32" | "i64" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a string" | "string" => "a string".into(),
        "a sequence" => "a list, such as [\"a\", \"b\"]".into(),
        "a map" => "a table".into(),
        "enum Rotation" => "one of \"daily\", \"hourly\", \"never\"".into(),
        "enum LogFormat" => "one of \"auto\", \"human\", \"json\"".into(),
        "enum AuthMode" => "one of \"open\", \"token\"".into(),
        "enum ForwardedHeader" => "one of \"x-forwarded-for\", \"forwarded\"".into(),
        other if other.starts_with("enum ") => {
            "one of its names, as a string (see chat.toml)".into()
        }
        other => other
            .trim_start_matches("a ")
            .to_string()
            .replace("struct ", "a table "),
    }
}

fn found(actual: &Actual) -> String {
    match actual {
        Actual::Str(s) => format!("the string \"{s}\""),
        Actual::Unsigned(n) => format!("{n}"),
        Actual::Signed(n) => format!("{n}"),
        Actual::Float(f) => format!("{f}"),
        Actual::Bool(b) => format!("{b}"),
        Actual::Char(c) => format!("the character '{c}'"),
        Actual::Seq => "a list".into(),
        Actual::Map => "a table".into(),
        other => other.to_string(),
    }
}

fn list(known: &[&str]) -> String {
    known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The known name nearest to `name`, if it is close enough to be a typo.
pub(super) fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, k)| match k.len() {
            0..=4 => *d <= 1,
            5..=8 => *d <= 2,
            n => *d <= n / 4,
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance over bytes (keys are ASCII), a swap of two neighbours counting as one edit
/// (optimal string alignment): `prot` is one edit from `port`.
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * w + j] + 1)
                    .min(d[i * w + j - 1] + 1)
                    .min(d[(i - 1) * w + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * w + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_matched_and_lines_found() {
        assert_eq!(
            closest("max_mesage_bytes", &["max_message_bytes", "max_rooms"]),
            Some("max_message_bytes")
        );
        assert_eq!(closest("zzz", &["host", "port"]), None);
        assert_eq!(closest("prot", &["host", "port"]), Some("port"));
        let text = "# c\n[server]\nhost = \"x\"\nport = 1\n[limits]\nmax_mesage_bytes = 5\n";
        let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(line_of(text, &p(&["server", "port"])), Some(4));
        assert_eq!(line_of(text, &p(&["limits", "max_mesage_bytes"])), Some(6));
        assert_eq!(line_of(text, &p(&["limits"])), Some(5));
        assert_eq!(
            line_of("server.port = 1\n", &p(&["server", "port"])),
            Some(1)
        );
    }
}
