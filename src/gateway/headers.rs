//! Which headers cross the proxy: hop-by-hop ones never do (RFC 9110 §7.6.1), forwarding ones are added.

use actix_web::http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers of RFC 9110 plus the legacy ones proxies strip.
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
pub fn named_in_connection(headers: &HeaderMap) -> Vec<HeaderName> {
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

/// `X-Forwarded-For` with `peer` appended to what earlier proxies wrote.
pub fn forwarded_for(headers: &HeaderMap, peer: Option<&str>) -> Option<String> {
    let earlier: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let mut all = earlier.join(", ");
    if let Some(peer) = peer {
        if !all.is_empty() {
            all.push_str(", ");
        }
        all.push_str(peer);
    }
    (!all.is_empty()).then_some(all)
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
    fn forwarded_for_appends_the_peer() {
        assert_eq!(
            forwarded_for(&map(&[]), Some("10.0.0.1")),
            Some("10.0.0.1".into())
        );
        let h = map(&[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "3.3.3.3"),
        ]);
        assert_eq!(
            forwarded_for(&h, Some("10.0.0.1")),
            Some("1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1".into())
        );
        assert_eq!(forwarded_for(&map(&[]), None), None);
    }
}
