//! PostgreSQL wire protocol codec for Warden: framing, parsing and encoding of the messages Warden
//! reads and writes, with no I/O (sans-io). Parsers take bytes and return values or errors, never
//! panicking on input; encoders append to a caller's buffer. The tokio adapter lives in the binary.
//!
//! Every length a peer declares is checked against a cap before anything waits for or allocates it.

pub mod backend;
mod error;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod sqlstate;

use bytes::{Bytes, BytesMut};

pub use error::WireError;

/// PostgreSQL's own cap on startup packets.
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Default cap on one tagged message (PostgreSQL allows up to 1 GiB for some; Warden bounds memory per session).
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;
/// Lower-case hex digits, for values shown as `\x...` in records.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// How much room [`split_frame`] reserves ahead for a partial message: a declared length alone must not
/// make Warden allocate up to the cap for every connection that sends five bytes and stalls.
const RESERVE_AHEAD: usize = 64 * 1024;

/// One tagged message: 1 tag byte, an i32 length that counts itself, the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    /// The whole message (tag, length, body), ready to relay as it is.
    pub raw: Bytes,
}

impl Frame {
    /// The bytes after the tag and length. Empty for a hand-built `Frame` shorter than a header
    /// (frames from [`split_frame`] always have one).
    pub fn body(&self) -> &[u8] {
        self.raw.get(5..).unwrap_or_default()
    }
}

/// Splits one complete tagged message off the front of `buf`; `Ok(None)` means more bytes are needed
/// and leaves `buf` as it was. The declared length is checked as soon as the header is there.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(WireError::InvalidLength { tag, len });
    }
    let len = len as usize;
    if len > max_len {
        return Err(WireError::MessageTooLarge { tag, len, max: max_len });
    }
    if buf.len() < len + 1 {
        buf.reserve((len + 1 - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    let raw = buf.split_to(len + 1).freeze();
    Ok(Some(Frame { tag, raw }))
}

/// A cursor over a message body: every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn malformed(&self) -> WireError {
        WireError::Malformed { what: self.what }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.malformed())?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, WireError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, WireError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(self.malformed());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, WireError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or_else(|| self.malformed())?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| self.malformed())?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// A count read from the wire, checked against what is left (each item needs at least `min_item` bytes).
    pub(crate) fn count(&mut self, min_item: usize) -> Result<usize, WireError> {
        let n = self.i16()?;
        if n < 0 || (n as usize) * min_item > self.buf.len() {
            return Err(self.malformed());
        }
        Ok(n as usize)
    }
}

/// Appends a tagged message: tag, length placeholder, body written by `f`, then the length patched in.
pub(crate) fn write_tagged(buf: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    buf.extend_from_slice(&[tag, 0, 0, 0, 0]);
    let start = buf.len() - 4;
    f(buf);
    let len = (buf.len() - start) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// A C string field. A NUL inside `s` would end the field early and let the rest be read as further
/// fields (another startup parameter, another error field), so the value is cut at its first NUL.
/// Callers validate their inputs; this is the last line.
pub(crate) fn put_cstr(buf: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    buf.extend_from_slice(&bytes[..end]);
    buf.extend_from_slice(&[0]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_nul_inside_a_cstring_cannot_add_fields() {
        let mut buf = bytes::BytesMut::new();
        super::put_cstr(&mut buf, "T-1\0client_encoding\0SJIS");
        assert_eq!(&buf[..], b"T-1\0");
    }

    use super::*;

    #[test]
    fn partial_frames_wait_and_leave_the_buffer_alone() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x0dSELECT 1"[..]);
        assert_eq!(split_frame(&mut buf, 1024).unwrap(), None);
        assert_eq!(buf.len(), 13);
        buf.extend_from_slice(b"\0Z\0\0\0\x05I");
        let f = split_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"SELECT 1\0");
        let z = split_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!((z.tag, z.body()), (b'Z', &b"I"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_partial_header_waits() {
        for n in 0..5 {
            let mut buf = BytesMut::from(&b"Q\0\0\0\x09"[..n]);
            assert_eq!(split_frame(&mut buf, 1024).unwrap(), None);
            assert_eq!(buf.len(), n);
        }
    }

    #[test]
    fn pipelined_frames_split_one_by_one_without_copying() {
        let mut buf = BytesMut::new();
        for (tag, body) in [
            (b'P', &b"\0SELECT 1\0\0\0"[..]),
            (b'B', b"\0\0\0\0\0\0\0\0"),
            (b'S', b""),
        ] {
            write_tagged(&mut buf, tag, |b| b.extend_from_slice(body));
        }
        buf.extend_from_slice(b"X\0\0"); // the next message, cut short
        let mut tags = Vec::new();
        let mut next_at = buf.as_ptr();
        while let Some(f) = split_frame(&mut buf, 1024).unwrap() {
            // Each frame is a view of the read buffer, right after the previous one.
            assert_eq!(f.raw.as_ptr(), next_at);
            next_at = f.raw.as_ptr().wrapping_add(f.raw.len());
            tags.push(f.tag);
        }
        assert_eq!(tags, b"PBS");
        assert_eq!(&buf[..], b"X\0\0");
    }

    #[test]
    fn a_declared_length_alone_does_not_reserve_the_cap() {
        let mut buf = BytesMut::from(&b"d\x03\xff\xff\xff"[..]);
        assert_eq!(split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN).unwrap(), None);
        assert!(buf.capacity() <= 2 * RESERVE_AHEAD, "{}", buf.capacity());
    }

    #[test]
    fn a_hand_built_short_frame_has_an_empty_body() {
        let f = Frame {
            tag: b'Q',
            raw: Bytes::from_static(b"Q"),
        };
        assert_eq!(f.body(), b"");
    }

    #[test]
    fn bad_lengths_are_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            split_frame(&mut buf, 1024),
            Err(WireError::MessageTooLarge { tag: b'Q', .. })
        ));
        let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(matches!(
            split_frame(&mut buf, 1024),
            Err(WireError::InvalidLength { len: -1, .. })
        ));
        let mut buf = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert!(matches!(
            split_frame(&mut buf, 1024),
            Err(WireError::InvalidLength { len: 3, .. })
        ));
    }
}
