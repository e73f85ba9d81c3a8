//! Conditional requests for what the relay serves from files: whether a request's
//! `If-None-Match` (or, without it, `If-Modified-Since`) says the client already has the
//! current version, so that it gets a `304 Not Modified` instead of the bytes again.

use std::time::SystemTime;

use http::{HeaderMap, header};

/// Whether the client's copy is current: its `If-None-Match` names `etag` (weak comparison,
/// as RFC 9110 wants for `If-None-Match`) or is `*`; without `If-None-Match`, its
/// `If-Modified-Since` is not before `modified` (when known).
pub fn not_modified(headers: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    let mut asked = false;
    for value in headers.get_all(header::IF_NONE_MATCH) {
        asked = true;
        let Ok(list) = value.to_str() else { continue };
        if list
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || weak(tag) == weak(etag))
        {
            return true;
        }
    }
    if asked {
        return false;
    }
    let since = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    match (since, modified) {
        // HTTP dates have whole seconds: a file changed within the second counts as changed.
        (Some(since), Some(modified)) => whole_seconds(modified) <= whole_seconds(since),
        _ => false,
    }
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

fn whole_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    fn if_none_match_and_if_modified_since() {
        let etag = "\"abc\"";
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(t);
        let later = httpdate::fmt_http_date(t + Duration::from_secs(5));
        let earlier = httpdate::fmt_http_date(t - Duration::from_secs(5));
        let cases: Vec<(Vec<(header::HeaderName, &str)>, bool)> = vec![
            (vec![], false),
            (vec![(header::IF_NONE_MATCH, "\"abc\"")], true),
            (vec![(header::IF_NONE_MATCH, "W/\"abc\"")], true),
            (vec![(header::IF_NONE_MATCH, "\"x\", \"abc\"")], true),
            (vec![(header::IF_NONE_MATCH, "*")], true),
            (vec![(header::IF_NONE_MATCH, "\"other\"")], false),
            (vec![(header::IF_MODIFIED_SINCE, date.as_str())], true),
            (vec![(header::IF_MODIFIED_SINCE, later.as_str())], true),
            (vec![(header::IF_MODIFIED_SINCE, earlier.as_str())], false),
            (vec![(header::IF_MODIFIED_SINCE, "yesterday")], false),
            // If-None-Match wins over If-Modified-Since.
            (
                vec![
                    (header::IF_NONE_MATCH, "\"other\""),
                    (header::IF_MODIFIED_SINCE, later.as_str()),
                ],
                false,
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(
                not_modified(&headers(&pairs), etag, Some(t)),
                expected,
                "{pairs:?}"
            );
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
