//! Messages a server sends, plus the encoders Warden uses when it is the server for clients.

use bytes::{BufMut, BytesMut};

use crate::{put_cstr, write_tagged, Frame, Reader, WireError, HEX};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    Authentication(AuthRequest<'a>),
    ParameterStatus {
        name: &'a str,
        value: &'a str,
    },
    BackendKeyData {
        process_id: i32,
        secret_key: i32,
    },
    ReadyForQuery {
        status: u8,
    },
    CommandComplete {
        tag: &'a str,
    },
    ErrorResponse(ErrorFields<'a>),
    NoticeResponse(ErrorFields<'a>),
    EmptyQueryResponse,
    PortalSuspended,
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    RowDescription,
    DataRow,
    ParameterDescription,
    CopyInResponse,
    CopyOutResponse,
    CopyBothResponse,
    CopyData(&'a [u8]),
    CopyDone,
    NotificationResponse {
        process_id: i32,
        channel: &'a str,
        payload: &'a str,
    },
    NegotiateProtocolVersion,
    Unknown(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    CleartextPassword,
    Md5Password { salt: [u8; 4] },
    Sasl { mechanisms: Vec<&'a str> },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    Other(i32),
}

/// The fields of an ErrorResponse or NoticeResponse, by their one-byte codes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields<'a> {
    fields: Vec<(u8, &'a str)>,
}

impl<'a> ErrorFields<'a> {
    fn parse(body: &'a [u8], what: &'static str) -> Result<Self, WireError> {
        let mut r = Reader::new(body, what);
        let mut fields = Vec::new();
        loop {
            let code = r.u8()?;
            if code == 0 {
                break;
            }
            fields.push((code, r.cstr()?));
        }
        Ok(ErrorFields { fields })
    }

    /// Every field, in the order received.
    pub fn fields(&self) -> &[(u8, &'a str)] {
        &self.fields
    }

    /// Re-encodes the fields as an ErrorResponse, leaving out those in `skip`.
    pub fn encode_without(&self, skip: &[u8], buf: &mut BytesMut) {
        write_tagged(buf, b'E', |b| {
            for (code, value) in self.fields.iter().filter(|(c, _)| !skip.contains(c)) {
                b.put_u8(*code);
                put_cstr(b, value);
            }
            b.put_u8(0);
        });
    }

    pub fn field(&self, code: u8) -> Option<&'a str> {
        self.fields.iter().find(|(c, _)| *c == code).map(|(_, v)| *v)
    }

    /// The non-localized severity ('V') when present, else 'S'.
    pub fn severity(&self) -> Option<&'a str> {
        self.field(b'V').or_else(|| self.field(b'S'))
    }

    pub fn code(&self) -> Option<&'a str> {
        self.field(b'C')
    }

    pub fn message(&self) -> Option<&'a str> {
        self.field(b'M')
    }
}

impl<'a> BackendMessage<'a> {
    pub fn parse(frame: &'a Frame) -> Result<Self, WireError> {
        let body = frame.body();
        Ok(match frame.tag {
            b'R' => BackendMessage::Authentication(parse_auth(body)?),
            b'S' => {
                let mut r = Reader::new(body, "ParameterStatus");
                BackendMessage::ParameterStatus {
                    name: r.cstr()?,
                    value: r.cstr()?,
                }
            }
            b'K' => {
                let mut r = Reader::new(body, "BackendKeyData");
                BackendMessage::BackendKeyData {
                    process_id: r.i32()?,
                    secret_key: r.i32()?,
                }
            }
            b'Z' => BackendMessage::ReadyForQuery {
                status: Reader::new(body, "ReadyForQuery").u8()?,
            },
            b'C' => BackendMessage::CommandComplete {
                tag: Reader::new(body, "CommandComplete").cstr()?,
            },
            b'E' => BackendMessage::ErrorResponse(ErrorFields::parse(body, "ErrorResponse")?),
            b'N' => BackendMessage::NoticeResponse(ErrorFields::parse(body, "NoticeResponse")?),
            b'I' => BackendMessage::EmptyQueryResponse,
            b's' => BackendMessage::PortalSuspended,
            b'1' => BackendMessage::ParseComplete,
            b'2' => BackendMessage::BindComplete,
            b'3' => BackendMessage::CloseComplete,
            b'n' => BackendMessage::NoData,
            b'T' => BackendMessage::RowDescription,
            b'D' => BackendMessage::DataRow,
            b't' => BackendMessage::ParameterDescription,
            b'G' => BackendMessage::CopyInResponse,
            b'H' => BackendMessage::CopyOutResponse,
            b'W' => BackendMessage::CopyBothResponse,
            b'd' => BackendMessage::CopyData(body),
            b'c' => BackendMessage::CopyDone,
            b'A' => {
                let mut r = Reader::new(body, "NotificationResponse");
                BackendMessage::NotificationResponse {
                    process_id: r.i32()?,
                    channel: r.cstr()?,
                    payload: r.cstr()?,
                }
            }
            b'v' => BackendMessage::NegotiateProtocolVersion,
            other => BackendMessage::Unknown(other),
        })
    }
}

fn parse_auth(body: &[u8]) -> Result<AuthRequest<'_>, WireError> {
    let mut r = Reader::new(body, "Authentication");
    Ok(match r.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => {
            let s = r.bytes(4)?;
            AuthRequest::Md5Password {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(r.rest()),
        12 => AuthRequest::SaslFinal(r.rest()),
        other => AuthRequest::Other(other),
    })
}

/// Rows a CommandComplete tag reports: `SELECT 5` -> 5, `INSERT 0 3` -> 3, `BEGIN` -> None.
pub fn command_rows(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    let command = words.next()?;
    let last = tag.rsplit(' ').next()?;
    if last == command {
        return None;
    }
    last.parse().ok()
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// 0 text, 1 binary (as the RowDescription says: a statement's description says 0 for every column;
    /// the Bind decides).
    pub format: i16,
}

/// A RowDescription's columns; `None` if it is malformed.
pub fn row_description(body: &[u8]) -> Option<Vec<Column>> {
    let count = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let end = rest.iter().position(|&b| b == 0)?;
        let name = String::from_utf8_lossy(&rest[..end]).into_owned();
        // table oid (4), attnum (2), type oid (4), typlen (2), typmod (4), then format (2).
        let fixed = rest.get(end + 1..end + 1 + 18)?;
        let type_oid = u32::from_be_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]);
        let format = i16::from_be_bytes([fixed[16], fixed[17]]);
        out.push(Column { name, type_oid, format });
        rest = &rest[end + 1 + 18..];
    }
    Some(out)
}

/// How a DataRow's column is encoded, as far as it is known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValueFormat {
    /// 0 text, 1 binary.
    pub format: Option<i16>,
    pub type_oid: Option<u32>,
}

/// A DataRow's values for a record, each cut to `max_value` bytes (with `...` appended); NULL as
/// `None`. Text-format values as (lossy) UTF-8. Binary-format values of common types (booleans,
/// integers, floats, text types, json, jsonb, uuid) as PostgreSQL would print them, others as `\x`
/// hex. Where the format is unknown, a value that is not printable UTF-8 is shown as hex. `column(i)`
/// says how column `i` is encoded. `None` if the row is malformed.
pub fn data_row(body: &[u8], column: impl Fn(usize) -> ValueFormat, max_value: usize) -> Option<Vec<Option<String>>> {
    let count = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for i in 0..count.max(0) as usize {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
            continue;
        }
        let value = rest.get(..len as usize)?;
        rest = &rest[len as usize..];
        let how = column(i);
        let binary = match how.format {
            Some(f) => f == 1,
            None => std::str::from_utf8(value).map_or(true, |t| !printable(t)),
        };
        // At most `max_value` bytes of the value are read (of text, up to a whole character).
        let shown = &value[..value.len().min(max_value)];
        let decoded = if binary {
            how.type_oid.and_then(|oid| binary_text(oid, value, shown))
        } else {
            Some(String::from_utf8_lossy(shown).into_owned())
        };
        let mut text = decoded.unwrap_or_else(|| {
            let mut s = String::with_capacity(2 + shown.len() * 2 + 3);
            s.push_str("\\x");
            for b in shown {
                s.push(char::from(HEX[usize::from(b >> 4)]));
                s.push(char::from(HEX[usize::from(b & 0xf)]));
            }
            s
        });
        if shown.len() < value.len() {
            text.push_str("...");
        }
        out.push(Some(text));
    }
    Some(out)
}

fn printable(text: &str) -> bool {
    !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

/// A binary-format value of a common type as PostgreSQL prints it; `None` for other types (and for a
/// value that is not what its type says). Text types are read from `shown`, the start of `value` the
/// record keeps (a character cut at its end is left out).
fn binary_text(type_oid: u32, value: &[u8], shown: &[u8]) -> Option<String> {
    // Type OIDs are fixed for built-in types (pg_type.dat).
    const BOOL: u32 = 16;
    const NAME: u32 = 19;
    const INT8: u32 = 20;
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const TEXT: u32 = 25;
    const OID: u32 = 26;
    const JSON: u32 = 114;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    const UNKNOWN: u32 = 705;
    const BPCHAR: u32 = 1042;
    const VARCHAR: u32 = 1043;
    const UUID: u32 = 2950;
    const JSONB: u32 = 3802;
    let text = |bytes: &[u8]| match std::str::from_utf8(bytes) {
        Ok(t) => Some(t.to_string()),
        // Cut inside a character: the whole characters before it.
        Err(e) if e.error_len().is_none() && bytes.len() < value.len() => {
            Some(std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()?.to_string())
        }
        Err(_) => None,
    };
    match type_oid {
        BOOL => match value {
            [0] => Some("f".into()),
            [1] => Some("t".into()),
            _ => None,
        },
        INT2 => Some(i16::from_be_bytes(value.try_into().ok()?).to_string()),
        INT4 => Some(i32::from_be_bytes(value.try_into().ok()?).to_string()),
        INT8 => Some(i64::from_be_bytes(value.try_into().ok()?).to_string()),
        OID => Some(u32::from_be_bytes(value.try_into().ok()?).to_string()),
        FLOAT4 => {
            let f = f32::from_be_bytes(value.try_into().ok()?);
            Some(float_text(f.is_nan(), f.is_infinite(), f > 0.0, &format!("{f:e}"), 6))
        }
        FLOAT8 => {
            let f = f64::from_be_bytes(value.try_into().ok()?);
            Some(float_text(f.is_nan(), f.is_infinite(), f > 0.0, &format!("{f:e}"), 15))
        }
        NAME | TEXT | JSON | UNKNOWN | BPCHAR | VARCHAR => text(shown),
        // jsonb: a version byte (1), then the text.
        JSONB => match shown.split_first() {
            Some((1, rest)) => text(rest),
            _ => None,
        },
        UUID => {
            let bytes: [u8; 16] = value.try_into().ok()?;
            let mut s = String::with_capacity(36);
            for (i, b) in bytes.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    s.push('-');
                }
                s.push(char::from(HEX[usize::from(b >> 4)]));
                s.push(char::from(HEX[usize::from(b & 0xf)]));
            }
            Some(s)
        }
        _ => None,
    }
}

/// A float as PostgreSQL prints it (since version 12): the shortest digits that read back as the same
/// value, in exponent form when the exponent is below -4 or at least `precision` (6 for float4, 15 for
/// float8), as `%g` does: `0.1`, `100000`, `1e+06`, `1e-05`. `scientific` is Rust's `{:e}` of the value,
/// which has those shortest digits.
fn float_text(nan: bool, infinite: bool, positive: bool, scientific: &str, precision: i32) -> String {
    if nan {
        return "NaN".into();
    }
    if infinite {
        return if positive { "Infinity" } else { "-Infinity" }.into();
    }
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if exponent < -4 || exponent >= precision {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    // Positional: the mantissa's digits with the point moved.
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let point = exponent + 1; // digits before the point
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(&digits);
    } else if point as usize >= digits.len() {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
    } else {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    }
    out
}

pub fn authentication_ok(buf: &mut BytesMut) {
    write_tagged(buf, b'R', |b| b.put_i32(0));
}

pub fn authentication_cleartext_password(buf: &mut BytesMut) {
    write_tagged(buf, b'R', |b| b.put_i32(3));
}

pub fn parameter_status(name: &str, value: &str, buf: &mut BytesMut) {
    write_tagged(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn backend_key_data(process_id: i32, secret_key: i32, buf: &mut BytesMut) {
    write_tagged(buf, b'K', |b| {
        b.put_i32(process_id);
        b.put_i32(secret_key);
    });
}

pub fn ready_for_query(status: u8, buf: &mut BytesMut) {
    write_tagged(buf, b'Z', |b| b.put_u8(status));
}

/// An error or notice Warden itself sends.
#[derive(Debug, Clone, Copy)]
pub struct ErrorResponse<'a> {
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

impl ErrorResponse<'_> {
    pub fn encode(&self, buf: &mut BytesMut) {
        self.encode_tagged(b'E', buf);
    }

    pub fn encode_notice(&self, buf: &mut BytesMut) {
        self.encode_tagged(b'N', buf);
    }

    fn encode_tagged(&self, tag: u8, buf: &mut BytesMut) {
        write_tagged(buf, tag, |b| {
            for (code, value) in [
                (b'S', Some(self.severity)),
                (b'V', Some(self.severity)),
                (b'C', Some(self.code)),
                (b'M', Some(self.message)),
                (b'D', self.detail),
                (b'H', self.hint),
            ] {
                if let Some(v) = value {
                    b.put_u8(code);
                    // A NUL inside a field would end it early on the client: drop it.
                    b.extend_from_slice(v.replace('\0', "").as_bytes());
                    b.put_u8(0);
                }
            }
            b.put_u8(0);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split_frame;

    fn parse_one(buf: &mut BytesMut) -> Frame {
        split_frame(buf, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn row_descriptions_and_data_rows_for_the_record() {
        let mut t = BytesMut::new();
        t.put_i16(2);
        for (name, format) in [("id", 0i16), ("blob", 1)] {
            t.put_slice(name.as_bytes());
            t.put_u8(0);
            t.put_i32(16384);
            t.put_i16(1);
            t.put_i32(23);
            t.put_i16(4);
            t.put_i32(-1);
            t.put_i16(format);
        }
        let cols = row_description(&t).unwrap();
        let names: Vec<(&str, u32, i16)> = cols.iter().map(|c| (c.name.as_str(), c.type_oid, c.format)).collect();
        assert_eq!(names, vec![("id", 23, 0), ("blob", 23, 1)]);
        let formats: Vec<i16> = cols.iter().map(|c| c.format).collect();
        let format = |i: usize| ValueFormat {
            format: formats.get(i).copied(),
            type_oid: None,
        };
        let mut d = BytesMut::new();
        d.put_i16(3);
        d.put_i32(5);
        d.put_slice(b"hello");
        d.put_i32(2);
        d.put_slice(&[0xde, 0xad]);
        d.put_i32(-1);
        assert_eq!(
            data_row(&d, format, 3).unwrap(),
            vec![Some("hel...".to_string()), Some("\\xdead".to_string()), None]
        );
        // Truncated input is refused, never read past.
        for cut in 0..d.len() {
            assert!(data_row(&d[..cut], format, 10).is_none(), "cut at {cut}");
        }
        for cut in 0..t.len() {
            assert!(row_description(&t[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn binary_values_of_common_types_read_as_postgresql_prints_them() {
        let cases: [(u32, &[u8], &str); 25] = [
            (16, &[1], "t"),
            (16, &[0], "f"),
            (21, &(-7i16).to_be_bytes(), "-7"),
            (23, &42i32.to_be_bytes(), "42"),
            (20, &(-9_000_000_000i64).to_be_bytes(), "-9000000000"),
            (26, &4_000_000_000u32.to_be_bytes(), "4000000000"),
            (700, &1.5f32.to_be_bytes(), "1.5"),
            (700, &0.1f32.to_be_bytes(), "0.1"),
            (700, &3.3f32.to_be_bytes(), "3.3"),
            (700, &1e6f32.to_be_bytes(), "1e+06"),
            (700, &123456.7f32.to_be_bytes(), "123456.7"),
            (701, &1e20f64.to_be_bytes(), "1e+20"),
            (701, &1e14f64.to_be_bytes(), "100000000000000"),
            (701, &0.00001f64.to_be_bytes(), "1e-05"),
            (701, &0.0001f64.to_be_bytes(), "0.0001"),
            (701, &(-0.0f64).to_be_bytes(), "-0"),
            (701, &(-2.5e-7f64).to_be_bytes(), "-2.5e-07"),
            (701, &f64::NEG_INFINITY.to_be_bytes(), "-Infinity"),
            (701, &f64::NAN.to_be_bytes(), "NaN"),
            (25, "paid ✓".as_bytes(), "paid ✓"),
            (1043, b"eu", "eu"),
            (3802, b"\x01{\"a\": 1}", "{\"a\": 1}"),
            (2950, &[0x12; 16], "12121212-1212-1212-1212-121212121212"),
            // Not what the type says, or a type without a reader: hex.
            (23, &[1, 2], "\\x0102"),
            (1700, &[0, 1], "\\x0001"),
        ];
        for (oid, value, want) in cases {
            let mut d = BytesMut::new();
            d.put_i16(1);
            d.put_i32(value.len() as i32);
            d.put_slice(value);
            let binary = |_| ValueFormat {
                format: Some(1),
                type_oid: Some(oid),
            };
            assert_eq!(
                data_row(&d, binary, 64).unwrap(),
                vec![Some(want.to_string())],
                "oid {oid}"
            );
        }
        // Long text is cut on a character boundary; text that is not UTF-8 is shown as hex.
        let mut d = BytesMut::new();
        d.put_i16(2);
        d.put_i32(6);
        d.put_slice("aé✓".as_bytes());
        d.put_i32(2);
        d.put_slice(&[0xff, 0xfe]);
        let text = |_| ValueFormat {
            format: Some(1),
            type_oid: Some(25),
        };
        assert_eq!(
            data_row(&d, text, 4).unwrap(),
            vec![Some("aé...".to_string()), Some("\\xfffe".to_string())]
        );
    }

    #[test]
    fn encoders_round_trip() {
        let mut buf = BytesMut::new();
        authentication_ok(&mut buf);
        authentication_cleartext_password(&mut buf);
        parameter_status("server_version", "15.18", &mut buf);
        backend_key_data(42, -7, &mut buf);
        ready_for_query(b'I', &mut buf);
        ErrorResponse {
            severity: "FATAL",
            code: "28000",
            message: "warden: no",
            detail: Some("d"),
            hint: None,
        }
        .encode(&mut buf);
        let expect = [
            BackendMessage::Authentication(AuthRequest::Ok),
            BackendMessage::Authentication(AuthRequest::CleartextPassword),
            BackendMessage::ParameterStatus {
                name: "server_version",
                value: "15.18",
            },
            BackendMessage::BackendKeyData {
                process_id: 42,
                secret_key: -7,
            },
            BackendMessage::ReadyForQuery { status: b'I' },
        ];
        for e in expect {
            let f = parse_one(&mut buf);
            assert_eq!(BackendMessage::parse(&f).unwrap(), e);
        }
        let f = parse_one(&mut buf);
        let BackendMessage::ErrorResponse(fields) = BackendMessage::parse(&f).unwrap() else {
            panic!()
        };
        assert_eq!(
            (fields.severity(), fields.code(), fields.message()),
            (Some("FATAL"), Some("28000"), Some("warden: no"))
        );
        assert_eq!(fields.field(b'D'), Some("d"));
        let mut again = BytesMut::new();
        fields.encode_without(b"D", &mut again);
        let f = parse_one(&mut again);
        let BackendMessage::ErrorResponse(fields) = BackendMessage::parse(&f).unwrap() else {
            panic!()
        };
        assert_eq!((fields.code(), fields.field(b'D')), (Some("28000"), None));
        assert!(buf.is_empty());
    }

    #[test]
    fn sasl_and_md5_requests() {
        let mut buf = BytesMut::new();
        write_tagged(&mut buf, b'R', |b| {
            b.put_i32(10);
            put_cstr(b, "SCRAM-SHA-256-PLUS");
            put_cstr(b, "SCRAM-SHA-256");
            b.put_u8(0);
        });
        write_tagged(&mut buf, b'R', |b| {
            b.put_i32(5);
            b.extend_from_slice(&[1, 2, 3, 4]);
        });
        write_tagged(&mut buf, b'R', |b| {
            b.put_i32(11);
            b.extend_from_slice(b"r=abc");
        });
        let f = parse_one(&mut buf);
        assert_eq!(
            BackendMessage::parse(&f).unwrap(),
            BackendMessage::Authentication(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
            })
        );
        let f = parse_one(&mut buf);
        assert_eq!(
            BackendMessage::parse(&f).unwrap(),
            BackendMessage::Authentication(AuthRequest::Md5Password { salt: [1, 2, 3, 4] })
        );
        let f = parse_one(&mut buf);
        assert_eq!(
            BackendMessage::parse(&f).unwrap(),
            BackendMessage::Authentication(AuthRequest::SaslContinue(b"r=abc"))
        );
    }

    #[test]
    fn command_tags() {
        assert_eq!(command_rows("SELECT 5"), Some(5));
        assert_eq!(command_rows("INSERT 0 3"), Some(3));
        assert_eq!(command_rows("UPDATE 2"), Some(2));
        assert_eq!(command_rows("COPY 7"), Some(7));
        assert_eq!(command_rows("BEGIN"), None);
        assert_eq!(command_rows("CREATE TABLE"), None);
        assert_eq!(command_rows(""), None);
    }

    #[test]
    fn truncated_bodies_are_errors() {
        for tag in [b'R', b'S', b'K', b'Z', b'C', b'E', b'A'] {
            let mut buf = BytesMut::new();
            write_tagged(&mut buf, tag, |_| {});
            let f = parse_one(&mut buf);
            assert!(BackendMessage::parse(&f).is_err(), "tag {}", tag as char);
        }
    }

    #[test]
    fn notices_carry_both_severities_and_no_inner_nul() {
        let mut buf = BytesMut::new();
        ErrorResponse {
            severity: "WARNING",
            code: "01000",
            message: "a\0b",
            detail: None,
            hint: Some("try again"),
        }
        .encode_notice(&mut buf);
        let f = parse_one(&mut buf);
        assert_eq!(f.tag, b'N');
        let BackendMessage::NoticeResponse(fields) = BackendMessage::parse(&f).unwrap() else {
            panic!("not a notice")
        };
        let codes: Vec<u8> = fields.fields().iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, b"SVCMH");
        assert_eq!(fields.field(b'S'), Some("WARNING"));
        assert_eq!(fields.severity(), Some("WARNING"));
        assert_eq!(fields.message(), Some("ab"));
        assert_eq!(fields.field(b'H'), Some("try again"));
        assert_eq!(fields.field(b'D'), None);
    }

    #[test]
    fn the_other_server_messages() {
        let mut buf = BytesMut::new();
        for (tag, body) in [
            (b'A', &b"\0\0\0\x2ajobs\0run 7\0"[..]),
            (b'R', b"\0\0\0\x0cdone"),
            (b'R', b"\0\0\0\x07"),
            (b'C', b"INSERT 0 3\0"),
            (b'd', b"row"),
            (b'I', b""),
            (b'T', b"\0\0"),
            (b'v', b"\0\0\0\0\0\0\0\0"),
            (b'?', b""),
        ] {
            write_tagged(&mut buf, tag, |b| b.extend_from_slice(body));
        }
        let expect = [
            BackendMessage::NotificationResponse {
                process_id: 42,
                channel: "jobs",
                payload: "run 7",
            },
            BackendMessage::Authentication(AuthRequest::SaslFinal(b"done")),
            BackendMessage::Authentication(AuthRequest::Other(7)),
            BackendMessage::CommandComplete { tag: "INSERT 0 3" },
            BackendMessage::CopyData(b"row"),
            BackendMessage::EmptyQueryResponse,
            BackendMessage::RowDescription,
            BackendMessage::NegotiateProtocolVersion,
            BackendMessage::Unknown(b'?'),
        ];
        for e in expect {
            let f = parse_one(&mut buf);
            assert_eq!(BackendMessage::parse(&f).unwrap(), e);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_server_bodies_are_errors() {
        for (tag, body) in [
            (b'R', &b"\0\0\0\x05\x01\x02"[..]),   // MD5 salt cut short
            (b'R', b"\0\0\0\x0aSCRAM-SHA-256\0"), // mechanism list not terminated
            (b'E', b"SERROR\0C42501"),            // field not terminated
            (b'E', b"SERROR\0"),                  // no final zero
            (b'S', b"name\0\xff\0"),              // value not UTF-8
            (b'K', b"\0\0\0\x01"),
        ] {
            let mut buf = BytesMut::new();
            write_tagged(&mut buf, tag, |b| b.extend_from_slice(body));
            let f = parse_one(&mut buf);
            assert!(
                matches!(BackendMessage::parse(&f), Err(WireError::Malformed { .. })),
                "tag {} body {body:?}",
                tag as char
            );
        }
    }
}
