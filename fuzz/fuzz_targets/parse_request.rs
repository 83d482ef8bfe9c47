//! Everything chatd and chatctl do with untrusted text, on arbitrary input: the request parser,
//! name and room rules, chatctl's command parser and its terminal sanitiser (whose output must
//! never contain a control character).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = chatd::protocol::looks_like_json_object(text);
    if let Ok(request) = chatd::protocol::parse_request(text) {
        // Whatever parsed must have a bounded id.
        assert!(request.id.as_ref().is_none_or(|id| id.len() <= chatd::protocol::MAX_ID_BYTES));
    }
    // The client's decoder takes anything a server (or an impostor) sends.
    let _ = chatd::protocol::decode(text);
    let _ = chatd::protocol::validate_name(text);
    if let Some(room) = chatd::protocol::normalize_room(text) {
        // Room names: 1-32 of [a-z0-9_.-], lower case, and normalising is idempotent. (They are
        // not user names: `server` or `.` are rooms one may join, not names one may take.)
        assert!(!room.is_empty() && room.len() <= 32, "{room:?}");
        assert!(room.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b)), "{room:?}");
        assert_eq!(chatd::protocol::normalize_room(&room).as_deref(), Some(room.as_str()));
    }
    let _ = chatd::client::input::parse_input(text);
    let clean = chatd::client::render::sanitize(text);
    assert!(!clean.chars().any(|c| c.is_control()), "control character survived sanitize: {clean:?}");
    assert!(!clean.contains(['\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}']));
});
