//! How deeply JSON taken into the mirror may nest, and a cheap check of it.
//!
//! serde_json refuses to read JSON nested deeper than 128 levels. The state file holds each
//! record a few levels down (`mirror` → collection → key → record) and each kept event a few more
//! (`ring` → `events` → event → `body` → `records` → record), so a record nested close to 128
//! levels would be written, and then refused when read back at the next start. The relay takes
//! nothing deeper than [`MAX_NESTING`]: the webhook refuses such a body with a 400, and records
//! read from Directus that nest deeper are skipped with a warning.

use serde_json::Value;

/// The deepest nesting the relay takes in: a webhook body, or a record read from Directus.
/// Each `[` or `{` is one level; a scalar at the top is level 0. With the levels the state file
/// adds (at most [`STATE_FILE_LEVELS`]) this stays well below serde_json's limit of 128.
pub const MAX_NESTING: usize = 64;

/// The most levels the state file puts around a record or a webhook payload (in a kept event:
/// the file, `ring`, `events`, the event, its `body`, `records`, the record's list).
pub const STATE_FILE_LEVELS: usize = 8;

/// serde_json's recursion limit when reading.
pub const SERDE_JSON_LIMIT: usize = 128;

const _: () = assert!(MAX_NESTING + STATE_FILE_LEVELS < SERDE_JSON_LIMIT);

/// The deepest nesting of `[` and `{` in `bytes`, ignoring brackets inside strings (escapes
/// included). It does not check that the bytes are JSON; the parser does that. It stops counting
/// once past `stop`, so a hostile body costs one pass at most.
pub fn depth_of_bytes(bytes: &[u8], stop: usize) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    if deepest > stop {
                        return deepest;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The deepest nesting in a parsed value, counted like [`depth_of_bytes`].
pub fn depth_of(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether `value` nests deeper than [`MAX_NESTING`].
pub fn too_deep(value: &Value) -> bool {
    depth_of(value) > MAX_NESTING
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_brackets_outside_strings_only() {
        let cases: [(&str, usize); 9] = [
            ("1", 0),
            ("\"[[[\"", 0),
            ("[]", 1),
            ("{\"a\":[1,{\"b\":[]}]}", 4),
            (r#"{"a":"\"[[[{{"}"#, 1),
            (r#"{"a":"\\","b":[[]]}"#, 3),
            (r#"["\\\"]]]",[[[]]]]"#, 4),
            ("[[[]],[]]", 3),
            ("{\"é\":[\"ü\\u005b\"]}", 2),
        ];
        for (json, expected) in cases {
            assert_eq!(
                depth_of_bytes(json.as_bytes(), usize::MAX),
                expected,
                "{json}"
            );
            let value: Value = serde_json::from_str(json).expect(json);
            assert_eq!(depth_of(&value), expected, "{json}");
        }
    }

    #[test]
    fn stops_counting_past_the_bound() {
        let deep = "[".repeat(10_000);
        assert_eq!(depth_of_bytes(deep.as_bytes(), 64), 65);
    }
}
