//! Which headers cross the proxy: hop-by-hop ones never do (RFC 9110 §7.6.1), forwarding ones are added.

use actix_web::http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers of RFC 9110 plus the legacy ones proxies strip.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// The headers named in `Connection`, which are hop-by-hop too (usually none: no allocation).
fn named_in_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect()
}

/// The end-to-end headers of `headers`, every value of each (several `Set-Cookie` stay several),
/// leaving out hop-by-hop ones and those in `also_skip`.
pub fn end_to_end<'a>(
    headers: &'a HeaderMap,
    also_skip: &'a [HeaderName],
) -> impl Iterator<Item = (&'a HeaderName, &'a header::HeaderValue)> + 'a {
    let named = named_in_connection(headers);
    headers.iter().filter(move |(name, _)| {
        !HOP_BY_HOP.contains(name) && !named.contains(name) && !also_skip.contains(name)
    })
}

/// The scheme and host the client used, as `X-Forwarded-Proto`/`-Host` pass them on.
#[derive(Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    pub proto: &'a str,
    pub host: &'a str,
}

/// What an earlier proxy said (`Forwarded: proto=…;host=…`, else the first
/// `X-Forwarded-Proto`/`-Host`), else this hop's own: plain `http`, the `Host` header, else
/// `default_host`. (actix-web's `ConnectionInfo` rules, without its allocations.)
pub fn origin<'a>(headers: &'a HeaderMap, default_host: &'a str) -> Origin<'a> {
    let (mut proto, mut host) = (None, None);
    for (name, value) in forwarded_pairs(headers) {
        if name.eq_ignore_ascii_case("proto") {
            proto = proto.or(Some(value));
        } else if name.eq_ignore_ascii_case("host") {
            host = host.or(Some(value));
        }
    }
    let first = |name: &HeaderName| {
        let value = headers.get(name)?.to_str().ok()?;
        value.split(',').next().map(str::trim)
    };
    Origin {
        proto: proto
            .or_else(|| first(&X_FORWARDED_PROTO))
            .unwrap_or("http"),
        host: host
            .or_else(|| first(&X_FORWARDED_HOST))
            .or_else(|| headers.get(header::HOST)?.to_str().ok())
            .unwrap_or(default_host),
    }
}

/// The `name=value` pairs of every `Forwarded` header (RFC 7239), values unquoted.
fn forwarded_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::FORWARDED)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([';', ',']))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            Some((name.trim(), value.trim().trim_matches('"')))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-kept", "yes"),
        ]);
        let mut kept: Vec<(String, String)> = end_to_end(&h, &[])
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            vec![
                ("set-cookie".into(), "a=1".into()),
                ("set-cookie".into(), "b=2".into()),
                ("x-kept".into(), "yes".into())
            ]
        );
    }

    #[test]
    fn origin_prefers_what_earlier_proxies_said() {
        let own = map(&[("host", "api.example")]);
        assert_eq!(
            origin(&own, "fallback"),
            Origin {
                proto: "http",
                host: "api.example"
            }
        );
        let bare = map(&[]);
        assert_eq!(origin(&bare, "fallback").host, "fallback");
        let forwarded = map(&[
            ("host", "internal"),
            ("x-forwarded-proto", "https, http"),
            ("x-forwarded-host", "edge.example"),
        ]);
        assert_eq!(
            origin(&forwarded, "fallback"),
            Origin {
                proto: "https",
                host: "edge.example"
            }
        );
        let rfc7239 = map(&[
            ("x-forwarded-proto", "http"),
            (
                "forwarded",
                "for=1.2.3.4, for=5.6.7.8; Proto=https;host=\"shop.example\"",
            ),
            ("forwarded", "proto=ftp"),
        ]);
        assert_eq!(
            origin(&rfc7239, "fallback"),
            Origin {
                proto: "https",
                host: "shop.example"
            }
        );
    }
}
