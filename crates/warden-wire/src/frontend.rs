//! Messages a client sends: the untagged startup packets and the tagged messages after them, plus the
//! encoders Warden uses when it is the client of PostgreSQL.

use bytes::{BufMut, BytesMut};
use smallvec::SmallVec;

use crate::{put_cstr, write_tagged, Frame, Reader, WireError, HEX, MAX_STARTUP_LEN};

const PROTOCOL_3_0: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
    Startup {
        protocol: u32,
        params: Vec<(String, String)>,
    },
}

/// Parses one untagged startup-phase packet off the front of `buf`; `Ok(None)` = need more bytes.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(WireError::InvalidLength { tag: 0, len });
    }
    let len = len as usize;
    if len > MAX_STARTUP_LEN {
        return Err(WireError::MessageTooLarge {
            tag: 0,
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let packet = buf.split_to(len);
    let mut r = Reader::new(&packet[4..], "startup");
    let code = r.i32()? as u32;
    let parsed = match code {
        SSL_REQUEST if len == 8 => StartupPacket::SslRequest,
        GSSENC_REQUEST if len == 8 => StartupPacket::GssEncRequest,
        CANCEL_REQUEST if len == 16 => StartupPacket::Cancel {
            process_id: r.i32()?,
            secret_key: r.i32()?,
        },
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => return Err(WireError::Malformed { what: "startup" }),
        code if code >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let key = r.cstr()?;
                if key.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                params.push((key.to_string(), value.to_string()));
            }
            // PostgreSQL refuses bytes after the terminator too.
            if !r.rest().is_empty() {
                return Err(WireError::Malformed { what: "startup" });
            }
            StartupPacket::Startup { protocol: code, params }
        }
        code => return Err(WireError::UnsupportedProtocol { code }),
    };
    Ok(Some(parsed))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    Query {
        sql: &'a str,
    },
    Parse {
        name: &'a str,
        sql: &'a str,
        param_types: Vec<u32>,
    },
    Bind(Bind<'a>),
    Execute {
        portal: &'a str,
        max_rows: i32,
    },
    Describe {
        kind: u8,
        name: &'a str,
    },
    Close {
        kind: u8,
        name: &'a str,
    },
    Sync,
    Flush,
    Terminate,
    CopyData(&'a [u8]),
    CopyDone,
    CopyFail {
        message: &'a str,
    },
    FunctionCall,
    /// PasswordMessage, SASLInitialResponse and SASLResponse share the tag: the raw body.
    Password(&'a [u8]),
    Unknown(u8),
}

/// A Bind's parts, borrowed from the message. A few format codes are held inline (a Bind is read for
/// every statement of the extended protocol); the parameters are not, which would make every
/// message, and the state of every session's relay that holds one, larger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub param_formats: SmallVec<[i16; 4]>,
    pub params: Vec<Option<&'a [u8]>>,
    pub result_formats: SmallVec<[i16; 4]>,
}

impl Bind<'_> {
    /// Parameter `i` as text for the audit log: text format as (lossy) UTF-8; binary format as text too
    /// when it is printable UTF-8 (drivers such as tokio-postgres send text values in binary format,
    /// which for text types is the UTF-8 itself), otherwise `\x` + hex. `None` for SQL NULL or an index
    /// out of range.
    pub fn param_display(&self, i: usize) -> Option<String> {
        let value = (*self.params.get(i)?)?;
        let format = match self.param_formats.len() {
            0 => 0,
            1 => self.param_formats[0],
            _ => *self.param_formats.get(i).unwrap_or(&0),
        };
        let printable = |s: &str| !s.is_empty() && s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t');
        if format == 0 {
            Some(String::from_utf8_lossy(value).into_owned())
        } else if let Some(text) = std::str::from_utf8(value).ok().filter(|s| printable(s)) {
            Some(text.to_string())
        } else {
            let mut s = String::with_capacity(2 + value.len() * 2);
            s.push_str("\\x");
            for b in value {
                s.push(HEX[usize::from(b >> 4)] as char);
                s.push(HEX[usize::from(b & 0xf)] as char);
            }
            Some(s)
        }
    }
}

impl<'a> FrontendMessage<'a> {
    pub fn parse(frame: &'a Frame) -> Result<Self, WireError> {
        let body = frame.body();
        Ok(match frame.tag {
            b'Q' => FrontendMessage::Query {
                sql: Reader::new(body, "Query").cstr()?,
            },
            b'P' => {
                let mut r = Reader::new(body, "Parse");
                let name = r.cstr()?;
                let sql = r.cstr()?;
                let n = r.count(4)?;
                let param_types = (0..n).map(|_| r.i32().map(|t| t as u32)).collect::<Result<_, _>>()?;
                FrontendMessage::Parse { name, sql, param_types }
            }
            b'B' => FrontendMessage::Bind(parse_bind(body)?),
            b'E' => {
                let mut r = Reader::new(body, "Execute");
                FrontendMessage::Execute {
                    portal: r.cstr()?,
                    max_rows: r.i32()?,
                }
            }
            b'D' | b'C' => {
                let what = if frame.tag == b'D' { "Describe" } else { "Close" };
                let mut r = Reader::new(body, what);
                let kind = r.u8()?;
                if kind != b'S' && kind != b'P' {
                    return Err(WireError::Malformed { what });
                }
                let name = r.cstr()?;
                if frame.tag == b'D' {
                    FrontendMessage::Describe { kind, name }
                } else {
                    FrontendMessage::Close { kind, name }
                }
            }
            b'S' => FrontendMessage::Sync,
            b'H' => FrontendMessage::Flush,
            b'X' => FrontendMessage::Terminate,
            b'd' => FrontendMessage::CopyData(body),
            b'c' => FrontendMessage::CopyDone,
            b'f' => FrontendMessage::CopyFail {
                message: Reader::new(body, "CopyFail").cstr()?,
            },
            b'F' => FrontendMessage::FunctionCall,
            b'p' => FrontendMessage::Password(body),
            other => FrontendMessage::Unknown(other),
        })
    }
}

fn parse_bind(body: &[u8]) -> Result<Bind<'_>, WireError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let nf = r.count(2)?;
    let param_formats = (0..nf).map(|_| r.i16()).collect::<Result<_, _>>()?;
    let np = r.count(4)?;
    // One format applies to all parameters; otherwise there must be one per parameter (as PostgreSQL checks).
    if nf > 1 && nf != np {
        return Err(WireError::Malformed { what: "Bind" });
    }
    let mut params = Vec::with_capacity(np);
    for _ in 0..np {
        let len = r.i32()?;
        if len == -1 {
            params.push(None);
        } else if len < 0 {
            return Err(WireError::Malformed { what: "Bind" });
        } else {
            params.push(Some(r.bytes(len as usize)?));
        }
    }
    let nr = r.count(2)?;
    let result_formats = (0..nr).map(|_| r.i16()).collect::<Result<_, _>>()?;
    Ok(Bind {
        portal,
        statement,
        param_formats,
        params,
        result_formats,
    })
}

/// A cleartext PasswordMessage body: the NUL-terminated password.
pub fn parse_password(body: &[u8]) -> Result<&str, WireError> {
    Reader::new(body, "PasswordMessage").cstr()
}

pub fn ssl_request(buf: &mut BytesMut) {
    buf.put_i32(8);
    buf.put_u32(SSL_REQUEST);
}

pub fn cancel_request(process_id: i32, secret_key: i32, buf: &mut BytesMut) {
    buf.put_i32(16);
    buf.put_u32(CANCEL_REQUEST);
    buf.put_i32(process_id);
    buf.put_i32(secret_key);
}

pub fn startup_message(params: &[(&str, &str)], buf: &mut BytesMut) {
    let start = buf.len();
    buf.put_i32(0);
    buf.put_u32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(buf, k);
        put_cstr(buf, v);
    }
    buf.put_u8(0);
    let len = (buf.len() - start) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn password_message(password: &[u8], buf: &mut BytesMut) {
    write_tagged(buf, b'p', |b| {
        b.extend_from_slice(password);
        b.put_u8(0);
    });
}

pub fn sasl_initial_response(mechanism: &str, data: &[u8], buf: &mut BytesMut) {
    write_tagged(buf, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.extend_from_slice(data);
    });
}

pub fn sasl_response(data: &[u8], buf: &mut BytesMut) {
    write_tagged(buf, b'p', |b| b.extend_from_slice(data));
}

/// Parse with no parameter types.
pub fn parse_message(name: &str, sql: &str, buf: &mut BytesMut) {
    write_tagged(buf, b'P', |b| {
        put_cstr(b, name);
        put_cstr(b, sql);
        b.put_i16(0);
    });
}

/// Bind with no parameters and default (text) result formats.
pub fn bind_message(portal: &str, statement: &str, buf: &mut BytesMut) {
    write_tagged(buf, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    });
}

pub fn execute_message(portal: &str, max_rows: i32, buf: &mut BytesMut) {
    write_tagged(buf, b'E', |b| {
        put_cstr(b, portal);
        b.put_i32(max_rows);
    });
}

pub fn query(sql: &str, buf: &mut BytesMut) {
    write_tagged(buf, b'Q', |b| put_cstr(b, sql));
}

pub fn terminate(buf: &mut BytesMut) {
    write_tagged(buf, b'X', |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split_frame;

    fn frame(buf: &mut BytesMut) -> Frame {
        split_frame(buf, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn startup_round_trip_and_special_codes() {
        let mut buf = BytesMut::new();
        startup_message(&[("user", "report-bot"), ("database", "shop")], &mut buf);
        ssl_request(&mut buf);
        cancel_request(7, -9, &mut buf);
        let p = parse_startup(&mut buf).unwrap().unwrap();
        assert_eq!(
            p,
            StartupPacket::Startup {
                protocol: PROTOCOL_3_0,
                params: vec![("user".into(), "report-bot".into()), ("database".into(), "shop".into())]
            }
        );
        assert_eq!(parse_startup(&mut buf).unwrap(), Some(StartupPacket::SslRequest));
        assert_eq!(
            parse_startup(&mut buf).unwrap(),
            Some(StartupPacket::Cancel {
                process_id: 7,
                secret_key: -9
            })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn startup_limits() {
        let mut partial = BytesMut::from(&b"\0\0\0\x10\0\x03"[..]);
        assert_eq!(parse_startup(&mut partial).unwrap(), None);
        assert_eq!(partial.len(), 6);
        let mut huge = BytesMut::from(&b"\x00\x10\x00\x00"[..]);
        assert!(matches!(
            parse_startup(&mut huge),
            Err(WireError::MessageTooLarge { .. })
        ));
        let mut tiny = BytesMut::from(&b"\0\0\0\x04"[..]);
        assert!(matches!(parse_startup(&mut tiny), Err(WireError::InvalidLength { .. })));
        let mut v2 = BytesMut::from(&b"\0\0\0\x08\0\x02\0\0"[..]);
        assert!(matches!(
            parse_startup(&mut v2),
            Err(WireError::UnsupportedProtocol { .. })
        ));
        let mut unterminated = BytesMut::from(&b"\0\0\0\x0c\0\x03\0\0user"[..]);
        assert!(matches!(
            parse_startup(&mut unterminated),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn extended_protocol_messages() {
        let mut buf = BytesMut::new();
        write_tagged(&mut buf, b'P', |b| {
            put_cstr(b, "s1");
            put_cstr(b, "SELECT $1, $2, $3");
            b.put_i16(1);
            b.put_i32(23);
        });
        write_tagged(&mut buf, b'B', |b| {
            put_cstr(b, "");
            put_cstr(b, "s1");
            b.put_i16(3);
            b.put_i16(0);
            b.put_i16(1);
            b.put_i16(0);
            b.put_i16(3);
            b.put_i32(2);
            b.extend_from_slice(b"42");
            b.put_i32(2);
            b.extend_from_slice(&[0x00, 0xff]);
            b.put_i32(-1);
            b.put_i16(0);
        });
        write_tagged(&mut buf, b'E', |b| {
            put_cstr(b, "");
            b.put_i32(0);
        });
        write_tagged(&mut buf, b'S', |_| {});
        let f = frame(&mut buf);
        assert_eq!(
            FrontendMessage::parse(&f).unwrap(),
            FrontendMessage::Parse {
                name: "s1",
                sql: "SELECT $1, $2, $3",
                param_types: vec![23]
            }
        );
        let f = frame(&mut buf);
        let FrontendMessage::Bind(bind) = FrontendMessage::parse(&f).unwrap() else {
            panic!("not a Bind")
        };
        assert_eq!(bind.statement, "s1");
        assert_eq!(bind.param_display(0).as_deref(), Some("42"));
        assert_eq!(bind.param_display(1).as_deref(), Some("\\x00ff"));
        assert_eq!(bind.param_display(2), None);
        assert_eq!(bind.param_display(3), None);
        let f = frame(&mut buf);
        assert_eq!(
            FrontendMessage::parse(&f).unwrap(),
            FrontendMessage::Execute {
                portal: "",
                max_rows: 0
            }
        );
        let f = frame(&mut buf);
        assert_eq!(FrontendMessage::parse(&f).unwrap(), FrontendMessage::Sync);
    }

    #[test]
    fn lying_counts_are_malformed_not_panics() {
        let mut buf = BytesMut::new();
        write_tagged(&mut buf, b'B', |b| {
            put_cstr(b, "");
            put_cstr(b, "");
            b.put_i16(0);
            b.put_i16(1);
            b.put_i32(1_000_000);
        });
        let f = frame(&mut buf);
        assert!(matches!(
            FrontendMessage::parse(&f),
            Err(WireError::Malformed { what: "Bind" })
        ));
        let mut buf = BytesMut::new();
        write_tagged(&mut buf, b'P', |b| {
            put_cstr(b, "");
            put_cstr(b, "x");
            b.put_i16(i16::MAX);
        });
        let f = frame(&mut buf);
        assert!(FrontendMessage::parse(&f).is_err());
        let mut buf = BytesMut::from(&b"Q\0\0\0\x06\xff\0"[..]);
        let f = frame(&mut buf);
        assert!(FrontendMessage::parse(&f).is_err(), "invalid UTF-8 is refused");
    }

    #[test]
    fn password_and_sasl_encoders() {
        let mut buf = BytesMut::new();
        password_message(b"tok", &mut buf);
        let f = frame(&mut buf);
        let FrontendMessage::Password(body) = FrontendMessage::parse(&f).unwrap() else {
            panic!()
        };
        assert_eq!(parse_password(body).unwrap(), "tok");
        sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc", &mut buf);
        let f = frame(&mut buf);
        assert_eq!(&f.body()[..14], b"SCRAM-SHA-256\0");
        parse_message("s", "SELECT 1", &mut buf);
        bind_message("", "s", &mut buf);
        execute_message("", 0, &mut buf);
        let f = frame(&mut buf);
        assert_eq!(
            FrontendMessage::parse(&f).unwrap(),
            FrontendMessage::Parse {
                name: "s",
                sql: "SELECT 1",
                param_types: vec![]
            }
        );
        let f = frame(&mut buf);
        assert!(matches!(
            FrontendMessage::parse(&f).unwrap(),
            FrontendMessage::Bind(Bind { statement: "s", .. })
        ));
        let f = frame(&mut buf);
        assert_eq!(
            FrontendMessage::parse(&f).unwrap(),
            FrontendMessage::Execute {
                portal: "",
                max_rows: 0
            }
        );
        query("SELECT 1", &mut buf);
        terminate(&mut buf);
        let f = frame(&mut buf);
        assert_eq!(
            FrontendMessage::parse(&f).unwrap(),
            FrontendMessage::Query { sql: "SELECT 1" }
        );
        let f = frame(&mut buf);
        assert_eq!(FrontendMessage::parse(&f).unwrap(), FrontendMessage::Terminate);
    }

    #[test]
    fn startup_packets_of_the_wrong_shape_are_refused() {
        let mut gss = BytesMut::from(&b"\0\0\0\x08\x04\xd2\x16\x30"[..]);
        assert_eq!(parse_startup(&mut gss).unwrap(), Some(StartupPacket::GssEncRequest));
        for bad in [
            &b"\0\0\0\x0c\x04\xd2\x16\x2e\0\0\0\x01"[..], // cancel without its key
            b"\0\0\0\x0c\x04\xd2\x16\x2f\0\0\0\0",        // SslRequest with a payload
            b"\0\0\0\x0b\0\x03\0\0\0x\0",                 // bytes after the terminator
            b"\0\0\0\x0e\0\x03\0\0a\0\xff\0\0\0",         // value not UTF-8
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                matches!(parse_startup(&mut buf), Err(WireError::Malformed { .. })),
                "{bad:?}"
            );
        }
        let mut negative = BytesMut::from(&b"\xff\xff\xff\xf0"[..]);
        assert!(matches!(
            parse_startup(&mut negative),
            Err(WireError::InvalidLength { tag: 0, len: -16 })
        ));
    }

    #[test]
    fn sasl_encoders_round_trip_as_password_bodies() {
        let mut buf = BytesMut::new();
        sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc", &mut buf);
        sasl_response(b"c=biws,r=abcdef,p=xyz", &mut buf);
        let f = frame(&mut buf);
        let FrontendMessage::Password(body) = FrontendMessage::parse(&f).unwrap() else {
            panic!("not a 'p' message")
        };
        let mut r = Reader::new(body, "SASLInitialResponse");
        assert_eq!(r.cstr().unwrap(), "SCRAM-SHA-256");
        assert_eq!(r.i32().unwrap(), 11);
        assert_eq!(r.rest(), b"n,,n=,r=abc");
        let f = frame(&mut buf);
        assert_eq!(
            FrontendMessage::parse(&f).unwrap(),
            FrontendMessage::Password(b"c=biws,r=abcdef,p=xyz")
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn bind_formats_one_for_all_or_one_each() {
        let bind = |formats: &[i16]| {
            let mut buf = BytesMut::new();
            write_tagged(&mut buf, b'B', |b| {
                put_cstr(b, "");
                put_cstr(b, "");
                b.put_i16(formats.len() as i16);
                formats.iter().for_each(|&f| b.put_i16(f));
                b.put_i16(2);
                for v in [&[0x01u8, 0x02][..], &[0x00, 0x0a]] {
                    b.put_i32(2);
                    b.extend_from_slice(v);
                }
                b.put_i16(0);
            });
            frame(&mut buf)
        };
        let f = bind(&[1]);
        let FrontendMessage::Bind(b) = FrontendMessage::parse(&f).unwrap() else {
            panic!("not a Bind")
        };
        assert_eq!(b.param_display(0).as_deref(), Some("\\x0102"));
        assert_eq!(b.param_display(1).as_deref(), Some("\\x000a"));
        let f = bind(&[0, 1, 0]);
        assert!(matches!(
            FrontendMessage::parse(&f),
            Err(WireError::Malformed { what: "Bind" })
        ));
    }

    #[test]
    fn the_other_client_messages() {
        let mut buf = BytesMut::new();
        for (tag, body) in [
            (b'D', &b"Sst\0"[..]),
            (b'C', b"Pportal\0"),
            (b'H', b""),
            (b'd', b"1\t2\n"),
            (b'c', b""),
            (b'f', b"client gave up\0"),
            (b'F', b"\0\0\0\x01"),
            (b'?', b"anything"),
        ] {
            write_tagged(&mut buf, tag, |b| b.extend_from_slice(body));
        }
        // Read first: a message borrows its frame (and a Bind's parts make it invariant in that borrow).
        let frames: Vec<Frame> = (0..8).map(|_| frame(&mut buf)).collect();
        let expect = [
            FrontendMessage::Describe { kind: b'S', name: "st" },
            FrontendMessage::Close {
                kind: b'P',
                name: "portal",
            },
            FrontendMessage::Flush,
            FrontendMessage::CopyData(b"1\t2\n"),
            FrontendMessage::CopyDone,
            FrontendMessage::CopyFail {
                message: "client gave up",
            },
            FrontendMessage::FunctionCall,
            FrontendMessage::Unknown(b'?'),
        ];
        assert_eq!(frames.len(), expect.len());
        for (f, e) in frames.iter().zip(expect) {
            assert_eq!(FrontendMessage::parse(f).unwrap(), e);
        }
        for (tag, body) in [(b'D', &b"X\0"[..]), (b'C', b""), (b'E', b"\0\0"), (b'P', b"a\0b\0\0")] {
            write_tagged(&mut buf, tag, |b| b.extend_from_slice(body));
            let f = frame(&mut buf);
            assert!(FrontendMessage::parse(&f).is_err(), "tag {}", tag as char);
        }
        assert!(parse_password(b"no terminator").is_err());
    }
}
