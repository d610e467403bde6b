//! A thin tokio adapter over the sans-io codec: a stream plus its read buffer.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use warden_wire::frontend::{parse_startup, StartupPacket};
use warden_wire::{split_frame, Frame};

use super::error::ProxyError;

pub struct Framed<S> {
    pub stream: S,
    pub buf: BytesMut,
    pub max_message: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    pub fn new(stream: S, max_message: usize) -> Self {
        Framed {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            max_message,
        }
    }

    /// Reads one untagged startup-phase packet.
    pub async fn read_startup(&mut self) -> Result<StartupPacket, ProxyError> {
        loop {
            if let Some(p) = parse_startup(&mut self.buf)? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    /// Reads one tagged message.
    pub async fn read_frame(&mut self) -> Result<Frame, ProxyError> {
        loop {
            if let Some(f) = split_frame(&mut self.buf, self.max_message)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    pub async fn fill(&mut self) -> Result<(), ProxyError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8 * 1024);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        Ok(())
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ProxyError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    pub fn into_parts(self) -> (S, BytesMut) {
        (self.stream, self.buf)
    }
}
