//! Image names.

use crate::error::{Error, Result};

/// Checks an image name: what object keys, file names and KMS contexts can
/// all carry unchanged, 1 to 128 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_image_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: name.to_string(),
        })
    }
}

/// True for a chunk object name: 64 lower-case hex digits.
pub(crate) fn is_chunk_name(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert!(check_image_name("python-app_1.2").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_image_name(bad).is_err(), "{bad}");
        }
        assert!(check_image_name(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn chunk_names() {
        assert!(is_chunk_name(&"ab".repeat(32)));
        assert!(!is_chunk_name(&"AB".repeat(32)));
        assert!(!is_chunk_name("abc"));
        assert!(!is_chunk_name(&format!("{}#1", "ab".repeat(32))));
    }
}
