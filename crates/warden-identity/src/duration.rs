use time::Duration;

use crate::IdentityError;

/// Parses `90s`, `15m`, `1h`, `7d`, `1h30m`: one or more parts of digits and a unit (s, m, h, d),
/// each unit at most once and from the largest down, so `30m1h` or `1m1m` is caught as a typo.
pub fn parse_duration(s: &str) -> Result<Duration, IdentityError> {
    let bad = |reason| IdentityError::BadDuration {
        input: s.to_string(),
        reason,
    };
    let text = s.trim();
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    let mut last_unit = i64::MAX;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return Err(bad("units are s, m, h and d")),
        };
        if digits.is_empty() {
            return Err(bad("each unit follows a number"));
        }
        if unit >= last_unit {
            return Err(bad("units go from the largest to the smallest, each once"));
        }
        last_unit = unit;
        let n: i64 = digits.parse().map_err(|_| bad("the number is too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| bad("the number is too large"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(bad("the last number has no unit"));
    }
    Ok(Duration::seconds(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::seconds(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::minutes(15));
        assert_eq!(parse_duration("1h").unwrap(), Duration::hours(1));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_duration("7d").unwrap(), Duration::days(7));
        assert_eq!(parse_duration("1d2h3m4s").unwrap(), Duration::seconds(93_784));
        assert_eq!(parse_duration(" 0s ").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations_name_the_text() {
        for bad in [
            "",
            "15",
            "m",
            "15 minutes",
            "1x",
            "-5m",
            "1.5h",
            "30m1h",
            "1m1m",
            "99999999999999999999d",
            "999999999999999d",
        ] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("\"{bad}\"")), "{e}");
        }
    }
}
