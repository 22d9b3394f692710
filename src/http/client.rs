//! The client's address: the TCP peer, unless the peer is a trusted proxy (`--trusted-proxies`):
//! then `X-Forwarded-For` read right to left past trusted entries, the first untrusted one.
//! Never the leftmost entry, which any client can write. The access log, the rate limits and
//! their keys (IPv6 by /64) use it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use actix_web::http::header::{HeaderMap, HeaderName};
use actix_web::{HttpMessage, HttpRequest};

use super::peer::IpText;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// One CIDR block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 or /128. Written
/// here rather than taken from `ipnet`: membership is a mask and a compare, a dozen lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    // IPv4 blocks are kept as IPv4-mapped IPv6 ones (prefix + 96), so one compare serves both.
    net: u128,
    mask: u128,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        bits(ip) & self.mask == self.net
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| "not an IP address or CIDR block")?;
        let (max, offset) = match ip {
            IpAddr::V4(_) => (32, 96),
            IpAddr::V6(_) => (128, 0),
        };
        let len: u32 = match len {
            Some(len) => len
                .parse()
                .ok()
                .filter(|len| *len <= max)
                .ok_or("the prefix length is out of range")?,
            None => max,
        };
        let len = len + offset;
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        Ok(Self {
            net: bits(ip) & mask,
            mask,
        })
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`: as it would be written in `--trusted-proxies`.
impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.mask.count_ones();
        match Ipv6Addr::from(self.net).to_ipv4_mapped() {
            Some(v4) if len >= 96 => write!(f, "{v4}/{}", len - 96),
            _ => write!(f, "{}/{len}", Ipv6Addr::from(self.net)),
        }
    }
}

/// One address.
impl From<IpAddr> for Cidr {
    fn from(ip: IpAddr) -> Self {
        Self {
            net: bits(ip),
            mask: u128::MAX,
        }
    }
}

/// An address as 128 bits, IPv4 as IPv4-mapped IPv6.
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The proxies whose `X-Forwarded-For` is believed (`--trusted-proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    /// The list as `--trusted-proxies` takes it, for the start-up line.
    pub fn text(&self) -> String {
        let list: Vec<String> = self.0.iter().map(Cidr::to_string).collect();
        list.join(",")
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(ip))
    }

    /// The client of a request from `peer` with `headers`: the peer when it is not trusted;
    /// else the rightmost `X-Forwarded-For` entry that is not trusted. Every entry trusted: the
    /// leftmost (the farthest hop a trusted proxy saw). An entry that is not an address, or a
    /// header value that is not visible ASCII, ends the walk at the last trusted hop: what is
    /// left of it was written by no proxy we trust.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.walk(peer, headers, |_| {})
    }

    /// The `X-Forwarded-For` this hop sends on: the client and the trusted hops after it, as
    /// the walk believed them, then `peer`. Whatever a client wrote before that is not passed
    /// on, so a next hop that trusts this one (the auth role) finds the same client.
    pub fn forwarded_for(&self, peer: IpAddr, headers: &HeaderMap) -> String {
        let mut hops = Vec::new();
        self.walk(peer, headers, |ip| hops.push(ip));
        let mut out = String::new();
        for ip in hops.iter().rev().copied().chain([canonical(peer)]) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(IpText::new(ip).as_str());
        }
        out
    }

    /// Walks `X-Forwarded-For` from the right while the hops are trusted, calling `hop` with
    /// each entry believed; returns the client.
    fn walk(&self, peer: IpAddr, headers: &HeaderMap, mut hop: impl FnMut(IpAddr)) -> IpAddr {
        let mut client = canonical(peer);
        if self.0.is_empty() || !self.trusts(client) {
            return client;
        }
        for value in headers.get_all(X_FORWARDED_FOR).rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for entry in text.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
                let Some(ip) = parse_entry(entry) else {
                    return client;
                };
                client = canonical(ip);
                hop(client);
                if !self.trusts(client) {
                    return client;
                }
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, or one with a port (`1.2.3.4:80`, `[::1]:80`), or
/// a bracketed IPv6 one (`[::1]`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let bare = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry);
    bare.parse()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// An IPv4-mapped IPv6 address (a dual-stack listener's IPv4 peer) as the IPv4 it is.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A request's client address, resolved once per request by the role that knows its trusted
/// proxies and kept in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// The client address of `req`: the one its role resolved; else resolved with the app's
/// `TrustedProxies` when it has some (the auth role's); else its TCP peer.
pub fn address(req: &HttpRequest) -> Option<IpAddr> {
    if let Some(ClientAddr(ip)) = req.extensions().get::<ClientAddr>() {
        return Some(*ip);
    }
    let peer = req.peer_addr()?.ip();
    Some(match req.app_data::<TrustedProxies>() {
        Some(trusted) => trusted.client(peer, req.headers()),
        None => canonical(peer),
    })
}

/// Resolves `req`'s client with `trusted` and returns it; kept in its extensions when it may
/// differ from the peer (without trusted proxies it never does: nothing to store).
pub fn resolve(req: &HttpRequest, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if trusted.0.is_empty() {
        return Some(canonical(peer));
    }
    let ip = trusted.client(peer, req.headers());
    req.extensions_mut().insert(ClientAddr(ip));
    Some(ip)
}

/// The part of an address a limit counts by: an IPv4 address whole, an IPv6 one by its /64
/// (one subscriber's prefix: rotating the low bits must not buy a new quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(Ipv4Addr),
    V6Prefix(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => Self::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }

    /// The key as text (`1.2.3.4`, `2001:db8:1:2::/64`), for a shared store.
    pub fn text(&self) -> String {
        match self {
            Self::V4(v4) => v4.to_string(),
            Self::V6Prefix(prefix) => {
                format!("{}/64", Ipv6Addr::from(u128::from(*prefix) << 64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies(list.iter().map(|c| c.parse().expect("CIDR")).collect())
    }

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(X_FORWARDED_FOR, HeaderValue::from_static(v));
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("IP")
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().expect("CIDR");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        let one: Cidr = "192.0.2.7".parse().expect("bare IPv4");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().expect("CIDR");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(
            "2001:db8::1/32".parse::<Cidr>().map(|c| c.to_string()),
            Ok("2001:db8::/32".into())
        );
        assert_eq!(
            "192.0.2.7".parse::<Cidr>().map(|c| c.to_string()),
            Ok("192.0.2.7/32".into())
        );
        let all: Cidr = "0.0.0.0/0".parse().expect("CIDR");
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("2001:db8::1")));
        let host6: Cidr = "::1".parse().expect("bare IPv6");
        assert!(host6.contains(ip("::1")) && !host6.contains(ip("::2")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "x", "10.0.0.0/-1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let none = TrustedProxies::default();
        let h = xff(&["1.2.3.4"]);
        assert_eq!(none.client(ip("203.0.113.5"), &h), ip("203.0.113.5"));
        let some = trusted(&["127.0.0.0/8"]);
        assert_eq!(some.client(ip("203.0.113.5"), &h), ip("203.0.113.5"));
    }

    #[test]
    fn a_trusted_peer_s_chain_is_walked_from_the_right() {
        let t = trusted(&["127.0.0.0/8", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        assert_eq!(t.client(peer, &xff(&["1.2.3.4, 5.6.7.8"])), ip("5.6.7.8"));
        assert_eq!(
            t.client(peer, &xff(&["1.2.3.4, 5.6.7.8, 10.0.0.1"])),
            ip("5.6.7.8")
        );
        // Several headers are one list, in order.
        assert_eq!(
            t.client(peer, &xff(&["1.2.3.4", "5.6.7.8", "10.0.0.1"])),
            ip("5.6.7.8")
        );
        // All trusted: the farthest one.
        assert_eq!(
            t.client(peer, &xff(&["10.0.0.2, 10.0.0.1"])),
            ip("10.0.0.2")
        );
        // No header: the peer itself.
        assert_eq!(t.client(peer, &HeaderMap::new()), peer);
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(
            t.client(peer, &xff(&["1.2.3.4, junk, 10.0.0.1"])),
            ip("10.0.0.1")
        );
        // Ports and brackets are understood; IPv4-mapped peers are IPv4.
        assert_eq!(t.client(peer, &xff(&["1.2.3.4:5555"])), ip("1.2.3.4"));
        assert_eq!(
            t.client(peer, &xff(&["[2001:db8::1]:80"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            t.client(ip("::ffff:127.0.0.1"), &xff(&["9.9.9.9"])),
            ip("9.9.9.9")
        );
        assert_eq!(t.client(peer, &xff(&["[2001:db8::2]"])), ip("2001:db8::2"));
    }

    #[test]
    fn a_header_line_that_is_not_ascii_ends_the_walk_rather_than_being_skipped() {
        let t = trusted(&["127.0.0.0/8"]);
        let mut h = xff(&["5.5.5.5"]);
        let garbage =
            HeaderValue::from_bytes(b"\xff, 127.0.0.2").expect("obs-text is a valid value");
        h.append(X_FORWARDED_FOR, garbage);
        // The line the proxy appended to cannot be read: the walk stops at the peer, never
        // reaching the client-written 5.5.5.5 before it.
        assert_eq!(t.client(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        assert_eq!(t.forwarded_for(ip("127.0.0.1"), &h), "127.0.0.1");
    }

    #[test]
    fn what_is_forwarded_is_the_client_and_the_trusted_hops_after_it() {
        let t = trusted(&["127.0.0.0/8", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        // Everything left of the client is the client's own writing: not passed on.
        assert_eq!(
            t.forwarded_for(peer, &xff(&["6.6.6.6, 5.6.7.8, 10.0.0.1"])),
            "5.6.7.8, 10.0.0.1, 127.0.0.1"
        );
        assert_eq!(t.forwarded_for(peer, &HeaderMap::new()), "127.0.0.1");
        // An untrusted peer is the client: what it claims is dropped.
        assert_eq!(
            t.forwarded_for(ip("203.0.113.5"), &xff(&["1.2.3.4"])),
            "203.0.113.5"
        );
        let none = TrustedProxies::default();
        assert_eq!(
            none.forwarded_for(ip("::ffff:203.0.113.5"), &xff(&["1.2.3.4"])),
            "203.0.113.5"
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a = ClientKey::of(ip("2001:db8:1:2:aaaa::1"));
        let b = ClientKey::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        let c = ClientKey::of(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.text(), "2001:db8:1:2::/64");
        assert_eq!(
            ClientKey::of(ip("::ffff:1.2.3.4")),
            ClientKey::of(ip("1.2.3.4"))
        );
        assert_eq!(ClientKey::of(ip("1.2.3.4")).text(), "1.2.3.4");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Addresses drawn from a few small blocks, so that walks meet trusted and untrusted
        /// hops alike.
        fn address() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                any::<u8>().prop_map(|n| IpAddr::from([10, 0, 0, n])),
                any::<u8>().prop_map(|n| IpAddr::from([192, 0, 2, n])),
                any::<u16>().prop_map(|n| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, n])),
                any::<u8>().prop_map(|n| IpAddr::V6(Ipv4Addr::new(10, 0, 0, n).to_ipv6_mapped())),
            ]
        }

        /// An `X-Forwarded-For` entry as proxies write them, or garbage.
        fn entry() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => address().prop_map(|ip| ip.to_string()),
                1 => (address(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port).to_string()),
                1 => address().prop_map(|ip| match ip {
                    IpAddr::V6(v6) => format!("[{v6}]"),
                    IpAddr::V4(v4) => v4.to_string(),
                }),
                1 => "[ -~]{0,12}",
            ]
        }

        fn trusted_list() -> impl Strategy<Value = Vec<Cidr>> {
            proptest::collection::vec(
                prop_oneof![
                    Just("10.0.0.0/24"),
                    Just("10.0.0.0/25"),
                    Just("192.0.2.0/25"),
                    Just("2001:db8::/120"),
                    Just("10.0.0.7"),
                ]
                .prop_map(|c| c.parse::<Cidr>().expect("a CIDR")),
                0..3,
            )
        }

        /// Header lines of comma-separated entries.
        fn lines() -> impl Strategy<Value = Vec<String>> {
            proptest::collection::vec(
                proptest::collection::vec(entry(), 0..4).prop_map(|e| e.join(", ")),
                0..3,
            )
        }

        fn headers(lines: &[String]) -> HeaderMap {
            let mut map = HeaderMap::new();
            for line in lines {
                if let Ok(value) = HeaderValue::from_str(line) {
                    map.append(X_FORWARDED_FOR, value);
                }
            }
            map
        }

        proptest! {
            #[test]
            fn a_cidr_that_parses_prints_as_itself(text in "[0-9a-f.:/]{0,24}") {
                if let Ok(cidr) = text.parse::<Cidr>() {
                    prop_assert_eq!(cidr.to_string().parse::<Cidr>(), Ok(cidr));
                }
            }

            #[test]
            fn a_block_contains_its_own_address(ip in address(), len in 0u32..=128) {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let cidr: Cidr = format!("{ip}/{}", len % (max + 1)).parse().expect("a CIDR");
                prop_assert!(cidr.contains(ip));
                prop_assert_eq!(cidr.to_string().parse::<Cidr>(), Ok(cidr));
            }

            /// Any header bytes at all: the walk never panics and names the peer or an entry.
            #[test]
            fn the_walk_never_panics(
                trusted in trusted_list(),
                peer in address(),
                raw in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..3),
            ) {
                let trusted = TrustedProxies(trusted);
                let mut map = HeaderMap::new();
                for bytes in raw {
                    if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                        map.append(X_FORWARDED_FOR, value);
                    }
                }
                let client = trusted.client(peer, &map);
                let forwarded = trusted.forwarded_for(peer, &map);
                prop_assert!(forwarded.ends_with(&peer.to_canonical().to_string()));
                prop_assert!(client == peer.to_canonical() || !trusted.0.is_empty());
            }

            /// What this hop forwards is read by a next hop that trusts it (and the same
            /// proxies) as the same client: the walk round-trips.
            #[test]
            fn the_next_hop_resolves_the_same_client(
                trusted in trusted_list(),
                peer in address(),
                lines in lines(),
                gateway in address(),
            ) {
                let ours = TrustedProxies(trusted.clone());
                let map = headers(&lines);
                let client = ours.client(peer, &map);
                let forwarded = ours.forwarded_for(peer, &map);
                for entry in forwarded.split(", ") {
                    prop_assert!(parse_entry(entry).is_some(), "{}", forwarded);
                }
                let next = TrustedProxies(
                    trusted.into_iter().chain([Cidr::from(gateway)]).collect(),
                );
                let sent = headers(std::slice::from_ref(&forwarded));
                prop_assert_eq!(next.client(gateway, &sent), client, "{}", forwarded);
            }
        }
    }
}
