//! Frames over any async byte stream (a Unix socket or a QUIC bidirectional stream).
//!
//! The one timing rule lives here: once the first byte of a frame has arrived, the rest
//! must follow within `stall_timeout`, or the connection is closed. An idle connection
//! (no partial frame) may stay silent indefinitely; liveness is the caller's business
//! (`ping`).

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{FrameDecoder, FrameError, encode};

/// Why reading a frame failed; each variant is a close reason in logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("peer stalled mid-frame for more than {0:?}")]
    Stalled(Duration),
    #[error("connection closed mid-frame")]
    TruncatedFrame,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// Label for `sbc_rpc_connections_closed_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Frame(e) => e.reason(),
            ReadError::Stalled(_) => "stalled",
            ReadError::TruncatedFrame => "truncated",
            ReadError::Io(_) => "io_error",
        }
    }
}

/// Reads frames from one half of a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    decoder: FrameDecoder,
    stall_timeout: Duration,
    chunk: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame_len: usize, stall_timeout: Duration) -> Self {
        Self {
            inner,
            decoder: FrameDecoder::new(max_frame_len),
            stall_timeout,
            chunk: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    /// The next frame's payload; `Ok(None)` when the peer closed cleanly between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            let n = if self.decoder.has_partial() {
                match tokio::time::timeout(self.stall_timeout, self.inner.read(&mut self.chunk))
                    .await
                {
                    Ok(r) => r?,
                    Err(_elapsed) => return Err(ReadError::Stalled(self.stall_timeout)),
                }
            } else {
                self.inner.read(&mut self.chunk).await?
            };
            if n == 0 {
                return if self.decoder.has_partial() {
                    Err(ReadError::TruncatedFrame)
                } else {
                    Ok(None)
                };
            }
            self.decoder.push(&self.chunk[..n]);
        }
    }
}

/// Writes frames to the other half.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    pub async fn write_msg<T: Serialize>(&mut self, msg: &T) -> std::io::Result<()> {
        self.write_raw(&encode(msg)).await
    }

    /// Write already-framed bytes (tests use this to send deliberately bad frames).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes).await?;
        self.inner.flush().await
    }

    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.inner.shutdown().await
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}
