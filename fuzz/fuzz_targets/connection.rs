//! A whole connection driven by arbitrary bytes after a valid WebSocket upgrade, against a real
//! chatd server running in this process. Any panic anywhere in the server aborts the process, so
//! libFuzzer sees it as a crash; after each input the server must still accept and greet a client.
#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("{info}");
            std::process::abort();
        }));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut config = chatd::Config::default();
                config.server.port = 0;
                config.admin.listen = String::new();
                config.server.connect_rate_per_ip = 0.0;
                config.server.max_connections_per_ip = 0;
                config.server.handshake_timeout_secs = 2.0;
                let server = chatd::Server::bind(config).await.unwrap();
                tx.send(server.local_addr()).unwrap();
                server.run(tokio_util::sync::CancellationToken::new()).await;
            });
        });
        rx.recv().unwrap()
    })
}

fn upgraded(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    tcp.write_all(UPGRADE).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    tcp
}

fuzz_target!(|data: &[u8]| {
    let addr = server();
    let mut tcp = upgraded(addr);
    let _ = tcp.write_all(data);
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    while matches!(tcp.read(&mut sink), Ok(n) if n > 0) {}
    // The server is still alive and serving.
    let mut probe = upgraded(addr);
    // A masked text frame: {"type":"rooms"} is refused before hello, which proves a reply.
    let payload = br#"{"type":"rooms"}"#;
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    probe.write_all(&frame).unwrap();
    let mut reply = [0u8; 2];
    probe.read_exact(&mut reply).expect("the server stopped answering");
    assert_eq!(reply[0], 0x81);
});
