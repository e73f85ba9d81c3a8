//! Who may fetch a file: the kiosk token, as `Authorization: Bearer …` or `?token=…` (an
//! `<img src>` cannot send headers), admitted as for Socket.IO ([`Gate`]: every token compared
//! in constant time; without a token, `allow_anonymous` and `anonymous_collections`). A token
//! gets a file only when an item of a collection it may read references it; anything else is a
//! 404, the same as for a file that does not exist, so that nothing leaks. Wrong tokens count
//! towards the same per-address limit as wrong Socket.IO handshakes (`clients.wrong_token_limit`);
//! past it the address gets 429 with `Retry-After`.

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::kiosk::access::{Gate, Refused};

/// The token a request shows, if any: the `Authorization` header first, else `token` in the
/// query.
pub fn token<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(query_token)
}

/// Whether a request showing `token` may fetch a file that items of `referenced_by` reference;
/// `Err` for a token that is not a kiosk token at all (counted by the wrong-token throttle, as
/// for Socket.IO handshakes, so that `?token=` cannot be guessed faster than a handshake's).
pub fn allowed(gate: &Gate, token: Option<&str>, referenced_by: &[String]) -> Result<bool, ()> {
    match gate.admit(token) {
        Ok(access) => Ok(referenced_by.iter().any(|c| access.may_read(c))),
        Err(Refused::BadToken) => Err(()),
        Err(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_token_gets_only_files_of_collections_it_reads() {
        let config = Config::from_toml(
            r#"
[webhook]
secret = "0123456789abcdef"
[[collections]]
name = "screens"
[[collections]]
name = "menus"
[[clients.tokens]]
name = "lobby"
token = "lobby-token-0123456789"
collections = ["screens"]
"#,
        )
        .expect("valid");
        let gate = Gate::new(&config.clients);
        let by = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let lobby = Some("lobby-token-0123456789");
        assert_eq!(allowed(&gate, lobby, &by(&["menus", "screens"])), Ok(true));
        assert_eq!(allowed(&gate, lobby, &by(&["menus"])), Ok(false));
        assert_eq!(
            allowed(&gate, lobby, &by(&[])),
            Ok(false),
            "referenced by nothing"
        );
        assert_eq!(allowed(&gate, Some("wrong"), &by(&["screens"])), Err(()));
        assert_eq!(
            allowed(&gate, None, &by(&["screens"])),
            Ok(false),
            "no anonymous"
        );
        let mut headers = HeaderMap::new();
        assert_eq!(token(&headers, Some("q")), Some("q"));
        headers.insert(AUTHORIZATION, "Bearer h".parse().expect("header"));
        assert_eq!(token(&headers, Some("q")), Some("h"));
    }
}
