/// Why bytes from a peer could not be decoded. Each variant says what was wrong with which message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message {} declares {len} bytes, more than the limit of {max}", tag_name(*tag))]
    MessageTooLarge { tag: u8, len: usize, max: usize },
    #[error("message {} declares an impossible length {len}", tag_name(*tag))]
    InvalidLength { tag: u8, len: i32 },
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
    #[error("unsupported protocol version {}.{} (Warden speaks 3.0)", code >> 16, code & 0xffff)]
    UnsupportedProtocol { code: u32 },
}

fn tag_name(tag: u8) -> String {
    if tag == 0 {
        "startup".to_string()
    } else if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}
