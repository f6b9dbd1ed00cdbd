//! Sizes and durations as people write them in flags and configuration
//! files: `4GiB`, `512k`, `24h`, `20ms`.

use std::time::Duration;

use crate::error::{Error, Result};

fn bad(text: &str, problem: &str) -> Error {
    Error::InvalidQuantity {
        text: text.to_string(),
        problem: problem.to_string(),
    }
}

/// Parses `123`, `64KiB`, `512MiB`, `4GiB`, `1T`, `10GB` (binary units either way).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| bad(text, "a size must start with a number"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad(text, "unknown unit (use B, KiB, MiB, GiB or TiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| bad(text, "too large"))
}

/// Parses `24h`, `30m`, `90s`, `2d`, `20ms` or `0s` (a plain number means seconds).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(bad(
            text,
            "a duration looks like 24h, 30m, 90s, 2d, 20ms or 0s",
        ));
    }
    let n: u64 = digits.parse().map_err(|_| bad(text, "too large"))?;
    let mult_ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad(text, "the unit must be ms, s, m, h or d")),
    };
    let ms = n
        .checked_mul(mult_ms)
        .ok_or_else(|| bad(text, "too large"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("123").unwrap(), 123);
        for bad in ["5 parsecs", "", "GiB", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("20ms").unwrap(), Duration::from_millis(20));
        for bad in ["", "h", "5w", "-1s", "1.5h", "99999999999999999999d", "5us"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
