use super::*;

#[test]
fn hand_encoded_frames_are_what_the_server_parses() {
    use crate::protocol::{ClientMsg, parse_request};
    let hello = parse_request(&hello_frame("b7", "bench3", None)).unwrap();
    assert_eq!(
        hello.msg,
        ClientMsg::Hello {
            name: "b7".into(),
            room: Some("bench3".into()),
            token: None,
            password: None,
            since: None,
            epoch: None,
            device: None,
        }
    );
    let signed = parse_request(&hello_frame("b7", "bench3", Some("a.b-c_d"))).unwrap();
    assert!(matches!(signed.msg, ClientMsg::Hello { token: Some(t), .. } if t == "a.b-c_d"));
    let text = payload(3, 17, 123456, 100);
    let say = parse_request(&say_frame("bench3", &text)).unwrap();
    assert_eq!(
        say.msg,
        ClientMsg::Say {
            room: Some("bench3".into()),
            text,
            action: false,
            reply_to: None
        }
    );
}

#[test]
fn payload_round_trips_inside_any_framing() {
    let p = payload(3, 17, 123456, 100);
    assert_eq!(p.len(), 100);
    assert_eq!(parse_payload(&p), Some((3, 17, 123456)));
    assert_eq!(parse_payload(&format!("b9: {p}")), Some((3, 17, 123456)));
    assert_eq!(
        parse_payload(&format!(r#"{{"type":"message","text":"{p}"}}"#)),
        Some((3, 17, 123456))
    );
    assert_eq!(parse_payload("b12"), None);
}
