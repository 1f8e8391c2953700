//! Length-prefixed framing for the RPC, sans-IO.
//!
//! A frame is a 4-byte big-endian payload length followed by that many bytes of JSON.
//! [`FrameDecoder`] is fed whatever bytes arrived and hands out complete frames; it
//! refuses zero-length and oversized frames before buffering their payload, so a peer
//! cannot make us allocate more than `max_frame_len` plus one read buffer.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::msg::{ClientFrame, Request};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Default and ceiling for a frame's payload (a full `list_sessions` page fits easily).
pub const DEFAULT_MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Why a byte stream or a frame was refused. Each maps to a metric label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("zero-length frame")]
    Empty,
    #[error("frame is not a valid message: {0}")]
    Malformed(String),
}

impl FrameError {
    /// Label for `sbc_rpc_frames_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::Empty => "empty",
            FrameError::Malformed(_) => "malformed",
        }
    }
}

/// Serialise a message into one frame (prefix + JSON).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0; HEADER_LEN];
    serde_json::to_writer(&mut out, msg)
        .expect("RPC messages always serialise: no maps with non-string keys");
    let len = u32::try_from(out.len() - HEADER_LEN).expect("RPC messages are far below 4 GiB");
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out
}

/// Parse one frame's payload into a message.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// What a server makes of a client's frame.
#[derive(Debug, PartialEq)]
pub enum ClientInput {
    Frame(ClientFrame),
    /// A request frame whose id we could read but whose body we do not understand
    /// (an unknown method from a newer client, or bad fields): answer it with an error,
    /// keep the connection.
    BadRequest {
        id: u64,
        error: String,
    },
}

/// Decode a client frame, telling a bad request (answerable) from garbage (fatal).
pub fn decode_client(payload: &[u8]) -> Result<ClientInput, FrameError> {
    match serde_json::from_slice::<ClientFrame>(payload) {
        Ok(frame) => Ok(ClientInput::Frame(frame)),
        Err(full) => {
            #[derive(serde::Deserialize)]
            struct Envelope {
                #[serde(rename = "type")]
                kind: String,
                id: u64,
                request: serde_json::Value,
            }
            match serde_json::from_slice::<Envelope>(payload) {
                Ok(env) if env.kind == "request" => {
                    let method = env
                        .request
                        .get("method")
                        .and_then(|m| m.as_str())
                        .unwrap_or("<none>")
                        .to_owned();
                    Ok(ClientInput::BadRequest {
                        id: env.id,
                        error: format!("cannot handle method `{method}`: {full}"),
                    })
                }
                _ => Err(FrameError::Malformed(full.to_string())),
            }
        }
    }
}

/// The version-bearing fields of a hello, hello_ack or hello_reject, read without
/// requiring the rest of the frame to match this build's types: a peer of another
/// version may have added or changed fields, and must still be told which versions
/// disagree.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct VersionProbe {
    #[serde(rename = "type")]
    pub kind: String,
    pub protocol_version: u16,
    #[serde(default)]
    pub software: String,
    #[serde(default)]
    pub node_name: String,
}

/// Read a handshake frame's type and protocol version; `None` if it has neither.
pub fn probe_version(payload: &[u8]) -> Option<VersionProbe> {
    serde_json::from_slice(payload).ok()
}

/// Whether the decoded request method is known (used to choose the error code).
pub fn is_known_method(name: &str) -> bool {
    const KNOWN: &[&str] = &[
        "create_session",
        "update_session",
        "delete_session",
        "get_session",
        "list_sessions",
        "adopt_sessions",
        "stats",
        "ping",
    ];
    debug_assert!(KNOWN.contains(&Request::Ping.method()));
    KNOWN.contains(&name)
}

/// Reassembles frames from a byte stream.
///
/// Drive it with [`FrameDecoder::push`] for every chunk read, then call
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)`. After an error the stream
/// is unusable: close the connection.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of unread data in `buf`.
    start: usize,
    max_frame_len: usize,
}

impl FrameDecoder {
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_frame_len,
        }
    }

    /// Append bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Whether part of a frame is waiting for more bytes (used for the stall timeout).
    pub fn has_partial(&self) -> bool {
        self.start < self.buf.len()
    }

    /// The next complete frame's payload, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let pending = &self.buf[self.start..];
        let Some((header, rest)) = pending.split_first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let Some(payload) = rest.get(..len) else {
            return Ok(None);
        };
        let frame = payload.to_vec();
        self.start += HEADER_LEN + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::msg::{ClientFrame, Request};

    #[test]
    fn frames_split_anywhere_reassemble() {
        let a = encode(&ClientFrame::Request {
            id: 1,
            request: Request::Ping,
        });
        let b = encode(&ClientFrame::Request {
            id: 2,
            request: Request::Stats,
        });
        let stream: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        for split in 0..stream.len() {
            let mut dec = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                dec.push(chunk);
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(decode::<ClientFrame>(&f).unwrap());
                }
            }
            assert_eq!(got.len(), 2, "split at {split}");
            assert!(!dec.has_partial());
        }
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&[0, 0, 0, 17]);
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
    }

    #[test]
    fn empty_frame_is_refused() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&[0, 0, 0, 0]);
        assert_eq!(dec.next_frame(), Err(FrameError::Empty));
    }

    #[test]
    fn unknown_method_is_answerable() {
        let payload = br#"{"type":"request","id":9,"request":{"method":"teleport"}}"#;
        match decode_client(payload).unwrap() {
            ClientInput::BadRequest { id, error } => {
                assert_eq!(id, 9);
                assert!(error.contains("teleport"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!is_known_method("teleport"));
        assert!(is_known_method("create_session"));
    }

    #[test]
    fn version_probe_reads_hellos_of_other_shapes() {
        let future = br#"{"type":"hello","protocol_version":2,"software":"x 9","role":"sorcerer"}"#;
        let p = probe_version(future).unwrap();
        assert_eq!((p.kind.as_str(), p.protocol_version), ("hello", 2));
        assert_eq!(p.software, "x 9");
        assert!(
            decode_client(future).is_err(),
            "the full decode fails, the probe does not"
        );
        assert_eq!(probe_version(b"[1,2]"), None);
    }

    #[test]
    fn garbage_is_fatal() {
        assert!(matches!(
            decode_client(b"\xff\x00not json"),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode_client(br#"{"type":"launch"}"#),
            Err(FrameError::Malformed(_))
        ));
    }
}
