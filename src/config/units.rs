//! Units as written in the config: durations (`"500ms"`, `"5s"`) and sizes (`"64KiB"`), parsed,
//! printed back the same way, and read by serde.

/// Durations written as `"500ms"`, `"5s"`, `"2m"`, `"1h"`, or a number of seconds.
pub mod duration {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration such as \"5s\" or \"500ms\""))?;
        let seconds = match unit.trim() {
            "ms" => number / 1000.0,
            "" | "s" => number,
            "m" | "min" => number * 60.0,
            "h" => number * 3600.0,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?}; use ms, s, m or h"
                ));
            }
        };
        Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
    }

    pub fn format(d: Duration) -> String {
        if d.subsec_millis() != 0 || d.is_zero() {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}s", d.as_secs())
        }
    }

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Sizes written as a number of bytes or as `"64KiB"`, `"8 MiB"`, `"1GiB"` (also kB, MB, GB).
pub mod byte_size {
    use serde::Deserialize;

    pub fn parse(text: &str) -> Result<usize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: usize = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size such as \"64KiB\" or \"8MiB\""))?;
        let factor: usize = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?}; use B, KiB, MiB or GiB"
                ));
            }
        };
        number
            .checked_mul(factor)
            .ok_or_else(|| format!("{text:?} is too large"))
    }

    pub fn format(n: usize) -> String {
        match n {
            n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
            n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
            n => format!("{n}B"),
        }
    }

    pub fn serialize<S: serde::Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*n))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(n),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }
}
