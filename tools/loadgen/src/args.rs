//! The command line, hand-rolled like the relay's own.

use std::time::Duration;

pub const USAGE: &str = "\
Usage: loadgen [OPTIONS]

Connects kiosks to a directus-relay over Socket.IO (Engine.IO v4, WebSocket only), posts webhook
updates at a steady rate and reports latency, losses, duplicates, cut-offs and the relay's memory
and CPU: one JSON line on stdout, a table on stderr. Latency is measured twice: from the moment
each event was sent (latency_ms) and from the moment the schedule said to send it
(latency_from_schedule_ms, which also counts a poster held up by slow webhook answers).

Relay:
  --url URL                 relay address, http:// or ws:// (default http://127.0.0.1:8080)
  --hook-path PATH          webhook path (default /hooks/directus)
  --secret SECRET           X-Relay-Secret for the webhook (or $LOADGEN_SECRET)
  --token TOKEN             kiosk handshake auth {\"token\": TOKEN} (or $LOADGEN_TOKEN); none if unset
  --pid PID                 the relay's PID: sample VmRSS/VmHWM and CPU time from /proc/PID

Kiosks:
  --kiosks N                kiosks that read every event (default 10)
  --stalled N               kiosks that connect and then never read their socket again (default 0)
  --stall-for DURATION      the --stalled kiosks fall behind and catch up instead: they read like
                            the others until the load begins, stop reading for DURATION, then
                            read again and catch up; they count as readers (keep DURATION below
                            the server's ping timeout, 20 s with socket.io's defaults)
  --connect-concurrency N   handshakes in flight at once (default 200)
  --subscribe               send 421[\"subscribe\",{\"collections\":[COLLECTION]}] and wait for its ack;
                            without it kiosks get every collection from the moment they connect
  --settle DURATION         pause after connecting, before the idle sample (default 2s)

Load:
  --collection NAME         collection of the posted updates (default screens)
  --rate N                  events per second (default 100)
  --events N                events in all (default 0: connect, sample and leave) ...
  --duration DURATION       ... or rate x duration events
  --warmup N                N more events before the load, at the same rate, delivered to every
                            kiosk before the warm sample (rss_warm_kib): the relay's first-event
                            growth (buffers sized to the frame) stays out of what the load adds
  --event-bytes SIZE        webhook body size; the payload's zpad field fills it (default 1KiB)
  --keys N                  update key n mod N (default 0: key n, every event a new item)
  --posters N               keep-alive webhook connections (default 4)
  --post-for DURATION       stop posting this long after the load began, posted or not (default:
                            post every event); a relay that answers the webhook slowly holds the
                            posters back, and what is left is reported as unposted
  --drain DURATION          longest wait for the last events to arrive (default 10s)

Oversized message:
  --oversize SIZE           one extra kiosk sends 42[\"x\",\"AAAA…\"] of SIZE bytes (e.g. 10MiB)
                            before the load; reports whether the relay cuts it off and its RSS
  --oversize-fragment SIZE  send it as WebSocket fragments of SIZE bytes (default: one frame)

  -h, --help                this help

SIZE: 1024, 64KiB, 10MiB, 1KB, 1MB.  DURATION: 20s, 500ms, 2m.";

/// Everything the run needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `host:port`.
    pub addr: String,
    pub hook_path: String,
    pub secret: Option<String>,
    pub token: Option<String>,
    pub pid: Option<u32>,
    pub kiosks: usize,
    pub stalled: usize,
    pub stall_for: Option<Duration>,
    pub connect_concurrency: usize,
    pub subscribe: bool,
    pub settle: Duration,
    pub collection: String,
    pub rate: f64,
    pub events: u64,
    pub warmup: u64,
    pub event_bytes: usize,
    pub keys: u64,
    pub posters: usize,
    pub post_for: Option<Duration>,
    pub drain: Duration,
    pub oversize: Option<usize>,
    pub oversize_fragment: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            hook_path: "/hooks/directus".into(),
            secret: None,
            token: None,
            pid: None,
            kiosks: 10,
            stalled: 0,
            stall_for: None,
            connect_concurrency: 200,
            subscribe: false,
            settle: Duration::from_secs(2),
            collection: "screens".into(),
            rate: 100.0,
            events: 0,
            warmup: 0,
            event_bytes: 1024,
            keys: 0,
            posters: 4,
            post_for: None,
            drain: Duration::from_secs(10),
            oversize: None,
            oversize_fragment: None,
        }
    }
}

/// `None` for `--help`.
pub fn parse(
    args: impl Iterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Options>, String> {
    let mut o = Options {
        secret: env("LOADGEN_SECRET"),
        token: env("LOADGEN_TOKEN"),
        ..Options::default()
    };
    let mut events = None;
    let mut duration = None;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--url" => o.addr = addr_of(&value()?)?,
            "--hook-path" => o.hook_path = value()?,
            "--secret" => o.secret = Some(value()?),
            "--token" => o.token = Some(value()?).filter(|t| !t.is_empty()),
            "--pid" => o.pid = Some(number(&flag, &value()?)?),
            "--kiosks" => o.kiosks = number(&flag, &value()?)?,
            "--stalled" => o.stalled = number(&flag, &value()?)?,
            "--stall-for" => o.stall_for = Some(duration_of(&flag, &value()?)?),
            "--connect-concurrency" => o.connect_concurrency = number(&flag, &value()?)?,
            "--subscribe" => o.subscribe = true,
            "--settle" => o.settle = duration_of(&flag, &value()?)?,
            "--collection" => o.collection = value()?,
            "--rate" => o.rate = number(&flag, &value()?)?,
            "--events" => events = Some(number(&flag, &value()?)?),
            "--duration" => duration = Some(duration_of(&flag, &value()?)?),
            "--warmup" => o.warmup = number(&flag, &value()?)?,
            "--event-bytes" => o.event_bytes = size_of(&flag, &value()?)?,
            "--keys" => o.keys = number(&flag, &value()?)?,
            "--posters" => o.posters = number(&flag, &value()?)?,
            "--post-for" => o.post_for = Some(duration_of(&flag, &value()?)?),
            "--drain" => o.drain = duration_of(&flag, &value()?)?,
            "--oversize" => o.oversize = Some(size_of(&flag, &value()?)?),
            "--oversize-fragment" => o.oversize_fragment = Some(size_of(&flag, &value()?)?),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    o.events = match (events, duration) {
        (Some(_), Some(_)) => return Err("give --events or --duration, not both".into()),
        (Some(n), None) => n,
        (None, Some(d)) => (o.rate * d.as_secs_f64()).round() as u64,
        (None, None) => 0,
    };
    if !(o.rate > 0.0 && o.rate.is_finite()) {
        return Err("--rate must be a positive number of events per second".into());
    }
    if o.connect_concurrency == 0 || o.posters == 0 {
        return Err("--connect-concurrency and --posters must be at least 1".into());
    }
    if o.events > 0 && o.secret.is_none() {
        return Err("posting events needs the webhook secret: --secret or $LOADGEN_SECRET".into());
    }
    if o.warmup > 0 && o.events == 0 {
        return Err("--warmup needs a load: --events or --duration".into());
    }
    if o.oversize_fragment == Some(0) {
        return Err("--oversize-fragment must be at least 1 byte".into());
    }
    Ok(Some(o))
}

/// `http://host:port/…`, `ws://host:port` or `host:port` into `host:port`.
fn addr_of(url: &str) -> Result<String, String> {
    let rest = match url.split_once("://") {
        Some(("http" | "ws", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "--url: {scheme}:// is not supported; use http:// or ws:// (no TLS)"
            ));
        }
        None => url,
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("--url: no host in {url:?}"));
    }
    Ok(if host.contains(':') && !host.ends_with(']') {
        host.to_owned()
    } else {
        format!("{host}:80")
    })
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.replace('_', "")
        .parse()
        .map_err(|_| format!("{flag}: {text:?} is not a number"))
}

fn size_of(flag: &str, text: &str) -> Result<usize, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let scale: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "kb" => 1000,
        "mb" => 1_000_000,
        _ => {
            return Err(format!(
                "{flag}: unknown unit in {text:?} (use KiB, MiB, KB, MB)"
            ));
        }
    };
    Ok(number::<usize>(flag, digits)? * scale)
}

fn duration_of(flag: &str, text: &str) -> Result<Duration, String> {
    let (digits, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number(flag, digits)?;
    if !(value >= 0.0 && value.is_finite()) {
        return Err(format!("{flag}: {text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Option<Options>, String> {
        parse(args.iter().map(|a| a.to_string()), |_| None)
    }

    #[test]
    fn reads_options() {
        let o = parse_args(&[
            "--url=http://127.0.0.1:9000/",
            "--secret",
            "s3cret-s3cret-s3cret",
            "--kiosks",
            "1_000",
            "--stalled=200",
            "--rate",
            "500",
            "--duration",
            "20s",
            "--event-bytes",
            "1KiB",
            "--oversize",
            "10MiB",
            "--subscribe",
            "--post-for",
            "30s",
            "--stall-for",
            "10s",
            "--warmup",
            "20",
        ])
        .expect("valid")
        .expect("not help");
        assert_eq!(o.addr, "127.0.0.1:9000");
        assert_eq!((o.kiosks, o.stalled), (1000, 200));
        assert_eq!(o.events, 10_000);
        assert_eq!(o.event_bytes, 1024);
        assert_eq!(o.oversize, Some(10 << 20));
        assert!(o.subscribe);
        assert_eq!(o.post_for, Some(Duration::from_secs(30)));
        assert_eq!(o.token, None);
        assert_eq!(o.stall_for, Some(Duration::from_secs(10)));
        assert_eq!(o.warmup, 20);
    }

    #[test]
    fn refuses_bad_options() {
        let cases: [(&[&str], &str); 7] = [
            (&["--events", "10"], "needs the webhook secret"),
            (&["--kiosks"], "needs a value"),
            (&["--kiosks", "many"], "not a number"),
            (&["--url", "https://relay"], "not supported"),
            (&["--event-bytes", "3GB"], "unknown unit"),
            (&["--events", "1", "--duration", "1s"], "not both"),
            (&["--warmup", "20"], "needs a load"),
        ];
        for (args, words) in cases {
            let error = parse_args(args).expect_err(words);
            assert!(error.contains(words), "{args:?}: {error}");
        }
        assert_eq!(parse_args(&["--help"]), Ok(None));
    }

    #[test]
    fn reads_sizes_and_durations() {
        assert_eq!(size_of("f", "10MiB"), Ok(10 << 20));
        assert_eq!(size_of("f", "1KB"), Ok(1000));
        assert_eq!(size_of("f", "77"), Ok(77));
        assert_eq!(duration_of("f", "500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration_of("f", "2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration_of("f", "3"), Ok(Duration::from_secs(3)));
    }
}
