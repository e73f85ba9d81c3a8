//! Device ids, the names kiosks give themselves (`auth: {device: "lobby-left"}`), and the
//! patterns that limit a token to some of them. Imports nothing of the relay.

/// The longest device id.
pub const MAX_DEVICE_LEN: usize = 64;

/// A device id: 1 to [`MAX_DEVICE_LEN`] ASCII letters, digits, `.`, `_`, `:` or `-`.
pub fn is_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether `device` matches one of a token's device patterns: an exact id, or a pattern with
/// one `*` that stands for any run of characters (`"lobby-*"`, `"*-left"`, `"*"`).
pub fn device_allowed(patterns: &[String], device: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.split_once('*') {
            None => pattern == device,
            Some((head, tail)) => {
                device.len() >= head.len() + tail.len()
                    && device.starts_with(head)
                    && device.ends_with(tail)
            }
        })
}

/// Whether `pattern` is a device pattern [`device_allowed`] understands (for config checks).
pub fn is_device_pattern(pattern: &str) -> bool {
    pattern.matches('*').count() <= 1 && (pattern == "*" || is_device_id(&pattern.replace('*', "")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_patterns() {
        let patterns = [
            "lobby-*".to_owned(),
            "hall".to_owned(),
            "*-spare".to_owned(),
        ];
        assert!(device_allowed(&patterns, "lobby-left"));
        assert!(device_allowed(&patterns, "lobby-"));
        assert!(device_allowed(&patterns, "hall"));
        assert!(device_allowed(&patterns, "x-spare"));
        assert!(!device_allowed(&patterns, "hall2"));
        assert!(!device_allowed(&patterns, "lobby"));
        assert!(!device_allowed(&patterns, "-spar"));
        assert!(device_allowed(&["*".to_owned()], "anything"));
        assert!(is_device_pattern("lobby-*"));
        assert!(is_device_pattern("*"));
        assert!(!is_device_pattern("a*b*"));
        assert!(!is_device_pattern("lobby *"));
        assert!(!is_device_pattern(""));
    }
}
