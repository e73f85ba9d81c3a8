//! Conditional requests for what the relay serves from files: whether a request's
//! `If-None-Match` says the client already has the current version, so that it gets a
//! `304 Not Modified` instead of the bytes again. (Every answer carries an `ETag`, which
//! browsers send back; `If-Modified-Since` alone is not looked at: the relay's binary budget
//! is better spent elsewhere than on parsing dates.)

use http::{HeaderMap, header};

/// Whether the client's copy is current: its `If-None-Match` names `etag` (weak comparison,
/// as RFC 9110 wants for `If-None-Match`) or is `*`.
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || weak(tag) == weak(etag))
}

/// Whether an `If-Range` (absent, or the current entity tag, compared strongly) lets a range
/// be served.
pub fn range_allowed(headers: &HeaderMap, etag: &str) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(v) => v
            .to_str()
            .is_ok_and(|v| v.trim() == etag && !etag.starts_with("W/")),
    }
}

fn weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn if_none_match() {
        let etag = "\"abc\"";
        let cases: Vec<(Vec<(header::HeaderName, &str)>, bool)> = vec![
            (vec![], false),
            (vec![(header::IF_NONE_MATCH, "\"abc\"")], true),
            (vec![(header::IF_NONE_MATCH, "W/\"abc\"")], true),
            (vec![(header::IF_NONE_MATCH, "\"x\", \"abc\"")], true),
            (vec![(header::IF_NONE_MATCH, "*")], true),
            (vec![(header::IF_NONE_MATCH, "\"other\"")], false),
            (
                vec![
                    (header::IF_NONE_MATCH, "\"other\""),
                    (header::IF_NONE_MATCH, "\"abc\""),
                ],
                true,
            ),
            (
                vec![(header::IF_MODIFIED_SINCE, "Sun, 06 Dec 2026 06:00:00 GMT")],
                false,
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(not_modified(&headers(&pairs), etag), expected, "{pairs:?}");
        }
        assert!(range_allowed(&headers(&[]), etag));
        assert!(range_allowed(
            &headers(&[(header::IF_RANGE, "\"abc\"")]),
            etag
        ));
        assert!(!range_allowed(
            &headers(&[(header::IF_RANGE, "\"old\"")]),
            etag
        ));
    }
}
