//! The human-readable side of the report: the JSON line's fields as an aligned table.

use serde_json::Value;

/// Every leaf of `report` as `path  value`, one per line, nulls left out.
pub fn table(report: &Value) -> String {
    let mut rows = Vec::new();
    flatten("", report, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::from("loadgen report\n");
    for (key, value) in rows {
        out.push_str(&format!("  {key:<width$}  {value}\n"));
    }
    out
}

fn flatten(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, value, rows);
            }
        }
        Value::Array(items) if items.is_empty() => {}
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, rows);
            }
        }
        Value::String(s) => rows.push((prefix.to_owned(), s.clone())),
        other => rows.push((prefix.to_owned(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_leaves_with_their_paths() {
        let report = json!({"a": 1, "b": {"c": "x", "d": null}, "e": ["n1"]});
        let text = table(&report);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows, [vec!["a", "1"], vec!["b.c", "x"], vec!["e[0]", "n1"]]);
    }
}
