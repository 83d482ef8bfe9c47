//! The client's own address when a trusted reverse proxy or load balancer stands in front
//! (`server.trusted_proxies`): from the PROXY protocol header (v1 text or v2 binary, which
//! HAProxy sends before anything else, TLS included), or from `Forwarded` / `X-Forwarded-For`.
//! Only peers in the trusted ranges are believed; everyone else is their own address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::http::Head;
use crate::addr::{Cidr, any_contains, unmap};
use crate::config::ForwardedHeader;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// The most a v2 header may carry after its 16 fixed bytes (addresses and TLVs) that we read.
const V2_MAX_BODY: usize = 1024;

/// Reads one PROXY protocol header (v1 or v2) and nothing after it. `Ok(None)`: the proxy speaks
/// for itself (`UNKNOWN`, `LOCAL`: its own health checks). An error says what is wrong.
pub(super) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, String> {
    let mut start = [0u8; 5];
    stream
        .read_exact(&mut start)
        .await
        .map_err(|e| format!("no PROXY header: {e}"))?;
    if &start == b"PROXY" {
        // Text: read up to the line's end, one byte at a time so nothing after it is taken.
        let mut line = start.to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err("PROXY v1 header longer than 107 bytes".into());
            }
            line.push(
                stream
                    .read_u8()
                    .await
                    .map_err(|e| format!("PROXY v1 header cut short: {e}"))?,
            );
        }
        return parse_v1(&line);
    }
    if start != V2_SIGNATURE[..5] {
        return Err("the connection does not start with a PROXY protocol header".into());
    }
    let mut fixed = [0u8; 16];
    fixed[..5].copy_from_slice(&start);
    stream
        .read_exact(&mut fixed[5..])
        .await
        .map_err(|e| format!("PROXY v2 header cut short: {e}"))?;
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > V2_MAX_BODY {
        return Err(format!("PROXY v2 header of {len} bytes is too long"));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("PROXY v2 header cut short: {e}"))?;
    parse_v2(&fixed, &body)
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (or `TCP6`, or `UNKNOWN …`).
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, String> {
    let text = std::str::from_utf8(line).map_err(|_| "PROXY v1 header is not text")?;
    let fields: Vec<&str> = text.trim_end_matches("\r\n").split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            src,
            _dst,
            sport,
            _dport,
        ] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| format!("PROXY v1: {src:?} is not an address"))?;
            if ip.is_ipv4() != (*family == "TCP4") {
                return Err(format!("PROXY v1: {src} is not a {family} address"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| format!("PROXY v1: {sport:?} is not a port"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(format!("malformed PROXY v1 header {:?}", text.trim_end())),
    }
}

/// The 16 fixed bytes (signature, version and command, family, length) and the body.
fn parse_v2(fixed: &[u8; 16], body: &[u8]) -> Result<Option<SocketAddr>, String> {
    if &fixed[..12] != V2_SIGNATURE {
        return Err("bad PROXY v2 signature".into());
    }
    if fixed[12] >> 4 != 2 {
        return Err(format!(
            "PROXY protocol version {} is not 2",
            fixed[12] >> 4
        ));
    }
    match fixed[12] & 0x0f {
        0 => return Ok(None), // LOCAL
        1 => {}               // PROXY
        c => return Err(format!("PROXY v2 command {c} is unknown")),
    }
    let short = || "PROXY v2 addresses cut short".to_string();
    match fixed[13] {
        // TCP or UDP over IPv4: src, dst (4 each), sport, dport.
        0x11 | 0x12 => {
            let b = body.get(..12).ok_or_else(short)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([b[8], b[9]]),
            )))
        }
        // Over IPv6: 16 each.
        0x21 | 0x22 => {
            let b = body.get(..36).ok_or_else(short)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([b[32], b[33]]),
            )))
        }
        // UNSPEC or a Unix socket: the proxy speaks for itself.
        0x00 | 0x31 | 0x32 => Ok(None),
        f => Err(format!("PROXY v2 address family {f:#04x} is unknown")),
    }
}

/// The client behind `peer` as the one forwarding header the proxies set (`header`) tells it,
/// when `peer` is a trusted proxy: walking the hops from the right (the nearest), the first that
/// is not itself a trusted proxy. Any other forwarding header is ignored: a proxy that sets
/// `X-Forwarded-For` passes a client's own `Forwarded` through, and believing it would let the
/// client choose its address. A hop that cannot be read (`unknown`, an obfuscated name, garbage)
/// ends the walk at the last trusted hop before it, for the same reason.
pub(super) fn client_from_headers(
    trusted: &[Cidr],
    peer: IpAddr,
    head: &Head,
    header: ForwardedHeader,
) -> IpAddr {
    if !any_contains(trusted, peer) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = match header {
        ForwardedHeader::Forwarded => head
            .all("forwarded")
            .flat_map(|v| split_list(v))
            .map(|element| {
                element
                    .split(';')
                    .find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
                    })
                    .and_then(parse_node)
            })
            .collect(),
        ForwardedHeader::XForwardedFor => head
            .all("x-forwarded-for")
            .flat_map(|v| split_list(v))
            .map(parse_node)
            .collect(),
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if any_contains(trusted, *ip) => client = *ip,
            Some(ip) => return unmap(*ip),
            None => return client,
        }
    }
    client
}

fn split_list(value: &[u8]) -> Vec<&str> {
    std::str::from_utf8(value)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect()
        })
        .unwrap_or_else(|_| vec!["\u{0}"])
}

/// `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`, `2001:db8::1`, `[2001:db8::1]`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')
        .and_then(|n| n.split(']').next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> Head {
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (head, _) = runtime
            .block_on(super::super::http::read_head(&mut raw.as_bytes()))
            .unwrap();
        head
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "198.51.100.9".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = ForwardedHeader::XForwardedFor;
        let fwd = ForwardedHeader::Forwarded;
        type Case<'a> = (&'a [(&'a str, &'a str)], ForwardedHeader, IpAddr);
        let cases: &[Case] = &[
            (&[], xff, proxy),
            (
                &[("X-Forwarded-For", "203.0.113.5")],
                xff,
                ip("203.0.113.5"),
            ),
            // A client's own claim is to the left of what the proxy saw: ignored.
            (
                &[("X-Forwarded-For", "1.2.3.4, 203.0.113.5")],
                xff,
                ip("203.0.113.5"),
            ),
            // Through two trusted proxies.
            (
                &[("X-Forwarded-For", "203.0.113.5, 10.9.9.9")],
                xff,
                ip("203.0.113.5"),
            ),
            (
                &[
                    ("X-Forwarded-For", "1.2.3.4"),
                    ("X-Forwarded-For", "203.0.113.5"),
                ],
                xff,
                ip("203.0.113.5"),
            ),
            (&[("X-Forwarded-For", "garbage")], xff, proxy),
            (&[("X-Forwarded-For", "1.2.3.4, unknown")], xff, proxy),
            // The promises issue, item 9: behind nginx (which sets X-Forwarded-For), a client's
            // own `Forwarded: for=X` once won. Only the configured header counts.
            (
                &[
                    ("Forwarded", "for=192.0.2.60"),
                    ("X-Forwarded-For", "203.0.113.5"),
                ],
                xff,
                ip("203.0.113.5"),
            ),
            (&[("Forwarded", "for=192.0.2.60")], xff, proxy),
            (
                &[("Forwarded", "for=192.0.2.60;proto=http;by=10.0.0.2")],
                fwd,
                ip("192.0.2.60"),
            ),
            (
                &[("Forwarded", "for=\"[2001:db8:cafe::17]:4711\"")],
                fwd,
                ip("2001:db8:cafe::17"),
            ),
            (&[("X-Forwarded-For", "203.0.113.5")], fwd, proxy),
            (&[("Forwarded", "for=_hidden")], fwd, proxy),
        ];
        for (headers, which, want) in cases {
            assert_eq!(
                client_from_headers(&trusted, proxy, &head(headers), *which),
                *want,
                "{headers:?} {which:?}"
            );
        }
        // From a peer that is not trusted, nothing is believed.
        let spoof = head(&[("X-Forwarded-For", "203.0.113.5")]);
        assert_eq!(
            client_from_headers(&trusted, stranger, &spoof, xff),
            stranger
        );
    }

    #[test]
    fn proxy_headers_v1_and_v2() {
        let v1 = |s: &str| parse_v1(s.as_bytes());
        assert_eq!(
            v1("PROXY TCP4 192.0.2.1 10.0.0.1 56324 443\r\n").unwrap(),
            Some("192.0.2.1:56324".parse().unwrap())
        );
        assert_eq!(
            v1("PROXY TCP6 2001:db8::1 2001:db8::2 4711 443\r\n").unwrap(),
            Some("[2001:db8::1]:4711".parse().unwrap())
        );
        assert_eq!(v1("PROXY UNKNOWN\r\n").unwrap(), None);
        for bad in [
            "PROXY TCP4 1.2.3.4\r\n",
            "PROXY TCP4 2001:db8::1 1.1.1.1 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
            "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(v1(bad).is_err(), "{bad}");
        }
        let mut fixed = [0u8; 16];
        fixed[..12].copy_from_slice(V2_SIGNATURE);
        fixed[12] = 0x21;
        fixed[13] = 0x11;
        let body = [192, 0, 2, 7, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb];
        assert_eq!(
            parse_v2(&fixed, &body).unwrap(),
            Some("192.0.2.7:8080".parse().unwrap())
        );
        assert!(parse_v2(&fixed, &body[..6]).is_err());
        fixed[12] = 0x20; // LOCAL
        assert_eq!(parse_v2(&fixed, &[]).unwrap(), None);
        fixed[12] = 0x11; // version 1 in a v2 frame
        assert!(parse_v2(&fixed, &body).is_err());
    }

    #[tokio::test]
    async fn reading_takes_the_header_and_nothing_after_it() {
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.1 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n";
        let got = read_header(&mut input).await.unwrap();
        assert_eq!(got, Some("192.0.2.1:1".parse().unwrap()));
        assert_eq!(input, b"GET / HTTP/1.1\r\n");
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 7, 10, 0, 0, 1, 0, 1, 0, 2]);
        v2.extend_from_slice(b"\x16\x03\x01");
        let mut input: &[u8] = &v2;
        let got = read_header(&mut input).await.unwrap();
        assert_eq!(got, Some("192.0.2.7:1".parse().unwrap()));
        assert_eq!(input, b"\x16\x03\x01");
        let mut garbage: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert!(read_header(&mut garbage).await.is_err());
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        let mut input: &[u8] = long.as_bytes();
        assert!(read_header(&mut input).await.is_err());
    }
}
