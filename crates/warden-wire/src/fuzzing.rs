//! The decode loops the fuzz targets (`fuzz/`) and the stable garbage test drive: exactly what the proxy
//! does with bytes from a peer. They must return, never panic, whatever the input.

use bytes::BytesMut;

use crate::backend::{command_rows, BackendMessage};
use crate::frontend::{parse_password, parse_startup, FrontendMessage};
use crate::split_frame;

/// A small cap so that fuzzing explores the limit checks too.
const FUZZ_MAX: usize = 64 * 1024;

pub fn decode_frontend(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    // Startup phase: packets until one that is not a negotiation request.
    loop {
        match parse_startup(&mut buf) {
            Ok(Some(crate::frontend::StartupPacket::SslRequest | crate::frontend::StartupPacket::GssEncRequest)) => {
                continue
            }
            Ok(Some(_)) => break,
            Ok(None) | Err(_) => return,
        }
    }
    while let Ok(Some(frame)) = split_frame(&mut buf, FUZZ_MAX) {
        match FrontendMessage::parse(&frame) {
            Ok(FrontendMessage::Bind(bind)) => {
                for i in 0..=bind.params.len() {
                    let _ = bind.param_display(i);
                }
            }
            Ok(FrontendMessage::Password(body)) => {
                let _ = parse_password(body);
            }
            _ => {}
        }
    }
}

pub fn decode_backend(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = split_frame(&mut buf, FUZZ_MAX) {
        match BackendMessage::parse(&frame) {
            Ok(BackendMessage::CommandComplete { tag }) => {
                let _ = command_rows(tag);
            }
            Ok(BackendMessage::ErrorResponse(e) | BackendMessage::NoticeResponse(e)) => {
                let _ = (e.severity(), e.code(), e.message());
            }
            _ => {}
        }
    }
}
