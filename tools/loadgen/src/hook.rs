//! Posting changes the way a Directus Flow does, over one keep-alive HTTP/1.1 connection per
//! poster: a client just big enough for the relay's own answers (which always carry a
//! `Content-Length`).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest wait for one answer from the relay.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The webhook body of one change: an update of `key` whose payload carries the event number,
/// the time it was due by the schedule (`planned_us`), the time it was actually sent and padding
/// up to about `size` bytes in all. The padding field sorts after the others, so kiosks find
/// `n`, `planned_us` and `sent_at_us` near the start of every event.
pub fn update_body(
    collection: &str,
    key: u64,
    n: u64,
    (planned_us, sent_at_us): (u64, u64),
    size: usize,
) -> String {
    let collection = serde_json::Value::from(collection).to_string();
    let event = collection.trim_matches('"');
    let head = format!(
        r#"{{"event":"{event}.items.update","collection":{collection},"keys":[{key}],"payload":{{"n":{n},"planned_us":{planned_us},"sent_at_us":{sent_at_us},"zpad":""#
    );
    const TAIL: &str = r#""}}"#;
    let pad = size.saturating_sub(head.len() + TAIL.len());
    let mut body = String::with_capacity(head.len() + pad + TAIL.len());
    body.push_str(&head);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(TAIL);
    body
}

/// One keep-alive connection to the relay, reopened after an error or a `Connection: close`.
#[derive(Debug)]
pub struct Client {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            conn: None,
        }
    }

    /// Sends one request and returns the status and body of the answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<(u16, String)> {
        let result =
            tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, headers, body))
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")));
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<(u16, String)> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect(&self.addr).await?;
                stream.set_nodelay(true)?;
                self.conn.insert(BufReader::new(stream))
            }
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let stream = conn.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;

        let mut line = String::new();
        conn.read_line(&mut line).await?;
        let status = parse_status_line(&line)?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().map_err(|_| bad("bad Content-Length"))?;
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad("chunked answers are not supported"));
                }
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).await?;
        if close {
            self.conn = None;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn bad(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

fn parse_status_line(line: &str) -> io::Result<u16> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
        (Some(version), Some(status)) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(bad("not an HTTP/1 status line")),
    }
}

/// The sum of every sample of the Prometheus metric whose name ends with `suffix` (any labels).
pub fn metric(text: &str, suffix: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name);
        if name.ends_with(suffix)
            && let Ok(v) = value.parse::<f64>()
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_bodies_have_the_requested_size_and_are_json() {
        let body = update_body("screens", 3, 17, (123_000, 123_456), 1024);
        assert_eq!(body.len(), 1024);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["event"], "screens.items.update");
        assert_eq!(v["keys"][0], 3);
        assert_eq!(v["payload"]["n"], 17);
        assert_eq!(v["payload"]["planned_us"], 123_000);
        assert_eq!(v["payload"]["sent_at_us"], 123_456);
        let small = update_body("screens", 3, 17, (123_000, 123_456), 10);
        assert!(serde_json::from_str::<serde_json::Value>(&small).is_ok());
    }

    #[test]
    fn reads_status_lines_and_metrics() {
        assert_eq!(
            parse_status_line("HTTP/1.1 202 Accepted\r\n").ok(),
            Some(202)
        );
        assert!(parse_status_line("garbage\r\n").is_err());
        let text = "# HELP x\nrelay_kiosk_overflows_total 3\nrelay_webhook_rejects_total{reason=\"busy\"} 2\nrelay_webhook_rejects_total{reason=\"too-large\"} 1\n";
        assert_eq!(metric(text, "kiosk_overflows_total"), Some(3.0));
        assert_eq!(metric(text, "webhook_rejects_total"), Some(3.0));
        assert_eq!(metric(text, "nothing"), None);
    }
}
