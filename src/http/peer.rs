//! The peer's IP as text, built on the stack: the access log and `X-Forwarded-For` need it on
//! every request, and `Ipv4Addr`'s `Display` goes through the formatting machinery (about
//! 2,000 instructions a call).

use std::io::Write as _;
use std::net::IpAddr;

/// Longest textual IP: an IPv4-mapped IPv6 address, `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
const MAX_LEN: usize = 45;

/// An IP address as text, without allocating.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; MAX_LEN],
    len: u8,
}

impl IpText {
    pub fn new(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; MAX_LEN],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                let mut at = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.buf[at] = b'.';
                        at += 1;
                    }
                    at += write_octet(&mut text.buf[at..], octet);
                }
                text.len = at as u8;
            }
            IpAddr::V6(v6) => {
                let mut cursor = std::io::Cursor::new(&mut text.buf[..]);
                // Cannot overflow: MAX_LEN is the longest form `Display` produces.
                let _ = write!(cursor, "{v6}");
                text.len = cursor.position() as u8;
            }
        }
        text
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and hex letters were written.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

/// Writes `octet` in decimal without leading zeros; returns the number of bytes written.
fn write_octet(out: &mut [u8], octet: u8) -> usize {
    if octet >= 100 {
        out[0] = b'0' + octet / 100;
        out[1] = b'0' + octet / 10 % 10;
        out[2] = b'0' + octet % 10;
        3
    } else if octet >= 10 {
        out[0] = b'0' + octet / 10;
        out[1] = b'0' + octet % 10;
        2
    } else {
        out[0] = b'0' + octet;
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn matches_display_for_every_octet_and_for_ipv6() {
        for octet in 0..=255u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(octet, 0, 10, octet));
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
        for ip in [
            "::1",
            "::",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "fe80::1:2:3:4",
        ] {
            let v6: Ipv6Addr = ip.parse().expect("valid IPv6");
            let ip = IpAddr::V6(v6);
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }
}
