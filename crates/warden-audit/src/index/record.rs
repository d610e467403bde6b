//! What the index takes from a stored line, parsed without copying: the few fields it keeps, borrowed
//! from the line (every other field is skipped unparsed), and `ts` as microseconds.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The fields of a record the index keeps. Required as in [`crate::Event`]: a line without them is
/// not a record.
#[derive(Deserialize)]
pub(super) struct Fields<'a> {
    #[serde(borrow)]
    pub ts: Str<'a>,
    pub seq: u64,
    #[serde(borrow)]
    pub event: Str<'a>,
    #[serde(borrow, default)]
    pub session_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub identity: Option<Identity<'a>>,
    #[serde(borrow, default)]
    pub decision: Option<Str<'a>>,
    #[serde(borrow)]
    pub prev_hash: Str<'a>,
    #[serde(borrow)]
    pub hash: Str<'a>,
}

/// The identity's fields the index keeps (its roles are skipped).
#[derive(Deserialize)]
pub(super) struct Identity<'a> {
    #[serde(borrow)]
    pub kind: Str<'a>,
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow, default)]
    pub requester: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub task: Option<Str<'a>>,
}

/// A JSON string, borrowed from the line unless it holds escapes.
pub(super) struct Str<'a>(Cow<'a, str>);

impl Str<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `ts` as microseconds since the epoch; `None` if it is not RFC 3339. The writer's own form
/// (`2026-11-23T06:44:19.123456Z`) is read directly, anything else through `time`.
pub(super) fn micros(ts: &str) -> Option<i64> {
    fast_micros(ts.as_bytes()).or_else(|| {
        OffsetDateTime::parse(ts, &Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp_nanos().div_euclid(1000) as i64)
    })
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` exactly, with a valid date and time; `None` for anything else.
fn fast_micros(b: &[u8]) -> Option<i64> {
    if b.len() != 27
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[26] != b'Z'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to]
            .iter()
            .try_fold(0i64, |n, &c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second, micro) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 26)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    // A leap second (60) is left to `time`.
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days from 1970-01-01 (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hour * 3_600 + minute * 60 + second) * 1_000_000) + micro)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow(ts: &str) -> Option<i64> {
        OffsetDateTime::parse(ts, &Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp_nanos().div_euclid(1000) as i64)
    }

    #[test]
    fn timestamps_read_directly_agree_with_rfc3339() {
        for ts in [
            "1970-01-01T00:00:00.000000Z",
            "1969-12-31T23:59:59.999999Z",
            "2000-02-29T12:00:00.5Z",
            "2000-02-29T12:00:00.500000Z",
            "2024-02-29T23:59:59.999999Z",
            "2026-11-23T06:44:19.123456Z",
            "2100-03-01T00:00:00.000001Z",
            "0001-01-01T00:00:00.000000Z",
            "9999-12-31T23:59:59.999999Z",
            "2026-11-23T06:44:19.123456+02:00",
            "2026-11-23T06:44:19Z",
        ] {
            assert_eq!(micros(ts), slow(ts), "{ts}");
            assert!(micros(ts).is_some(), "{ts}");
        }
        for ts in [
            "2023-02-29T00:00:00.000000Z",
            "2100-02-29T00:00:00.000000Z",
            "2026-13-01T00:00:00.000000Z",
            "2026-00-01T00:00:00.000000Z",
            "2026-04-31T00:00:00.000000Z",
            "2026-04-00T00:00:00.000000Z",
            "2026-04-01T24:00:00.000000Z",
            "2026-04-01T00:60:00.000000Z",
            "2026-04-01T00:00:00.00000aZ",
            "2026-04-01 00:00:00.000000Z",
            "+026-04-01T00:00:00.000000Z",
            "not a time",
            "",
        ] {
            assert_eq!(fast_micros(ts.as_bytes()), None, "{ts}");
            assert_eq!(micros(ts), slow(ts), "{ts}");
        }
    }

    #[test]
    fn fields_are_borrowed_unless_escaped() {
        let line = br#"{"ts":"2026-11-23T06:44:19.123456Z","seq":7,"event":"query","session_id":"s\"1","identity":{"kind":"agent","name":"bot","requester":"human:alice","roles":["a"]},"statement":"SELECT \"x\"","parameters":[null,"1"],"decision":"allow","rows":3,"prev_hash":"aa","hash":"bb"}"#;
        let f: Fields = serde_json::from_slice(line).unwrap();
        assert_eq!(f.seq, 7);
        assert!(matches!(f.event.0, Cow::Borrowed("query")));
        assert_eq!(f.session_id.as_ref().map(Str::as_str), Some("s\"1"));
        let id = f.identity.unwrap();
        assert_eq!((id.kind.as_str(), id.name.as_str()), ("agent", "bot"));
        assert_eq!(id.requester.as_ref().map(Str::as_str), Some("human:alice"));
        assert!(id.task.is_none());
        assert_eq!(f.decision.as_ref().map(Str::as_str), Some("allow"));
        assert_eq!((f.prev_hash.as_str(), f.hash.as_str()), ("aa", "bb"));
        assert!(serde_json::from_slice::<Fields>(br#"{"seq":1,"event":"x"}"#).is_err());
    }
}
