//! Fuzzing entry points: what each fuzz target of this crate feeds, and which properties
//! it checks.
//!
//! This module owns the bodies of the cargo-fuzz targets in `fuzz/fuzz_targets/` (each
//! target is one line calling a function here) and of the stable-toolchain corpus replay
//! in `shared/tests/fuzz_corpus.rs`, so the nightly fuzzer and `cargo test` run exactly
//! the same code over the same inputs. Every function takes arbitrary bytes and must
//! return normally for any of them: a panic here is either a parser that panics on
//! hostile input or a broken property (both are bugs in the code under test, never in
//! the input).
//!
//! - [`rpc_frame`]: the RPC byte stream as the media node reads it from a peer
//!   ([`FrameDecoder`] split at several chunk sizes, then both frame decoders), with two
//!   properties: reassembly does not depend on how the bytes were split, and every
//!   [`ClientFrame`] (and [`ServerFrame`]) we accept re-encodes to a frame that decodes
//!   to an equal value.
//! - [`config()`]: the YAML configuration file (`Config::parse` and [`config::locate`]).
//!
//! Seeds live in `fuzz/corpus/<target>/`; the RPC seeds are real encodings written by
//! `cargo run -p sbc-shared --example gen_rpc_corpus`.

use std::path::Path;

use crate::config::{self, Config, Role};
use crate::rpc::codec::{self, ClientInput, DEFAULT_MAX_FRAME_LEN, FrameDecoder, FrameError};
use crate::rpc::msg::{ClientFrame, ServerFrame};

/// Chunk sizes the RPC stream is pushed in: all at once, byte by byte (every split
/// point of the length prefix), and sizes that straddle prefix and payload differently.
const CHUNK_SIZES: [usize; 4] = [usize::MAX, 1, 3, 61];

/// The frame size limit used for the fuzzed decoder: the production default, so that
/// both "too large" and "not yet complete" are reachable from short inputs.
const MAX_FRAME_LEN: usize = DEFAULT_MAX_FRAME_LEN;

/// Feed `data` to the RPC frame decoder as a byte stream and decode every frame it
/// yields as a client frame and as a server frame.
///
/// Panics (a bug) if the frames or the terminal error depend on the chunking, if the
/// decoder hands out a frame that breaks its own limits, or if a decoded [`ClientFrame`]
/// or [`ServerFrame`] does not survive encode → reassemble → decode unchanged.
pub fn rpc_frame(data: &[u8]) {
    let whole = reassemble(data, CHUNK_SIZES[0]);
    for &chunk in &CHUNK_SIZES[1..] {
        let split = reassemble(data, chunk);
        assert_eq!(
            split.frames, whole.frames,
            "frames differ when the stream arrives in chunks of {chunk}"
        );
        assert_eq!(
            split.error, whole.error,
            "stream error differs when the stream arrives in chunks of {chunk}"
        );
        if whole.error.is_none() {
            assert_eq!(
                split.partial, whole.partial,
                "pending-bytes state differs when the stream arrives in chunks of {chunk}"
            );
        }
    }
    for frame in &whole.frames {
        assert!(
            !frame.is_empty() && frame.len() <= MAX_FRAME_LEN,
            "decoder yielded a {}-byte frame (limit {MAX_FRAME_LEN})",
            frame.len()
        );
        match codec::decode_client(frame) {
            Ok(ClientInput::Frame(decoded)) => {
                if let ClientFrame::Request { request, .. } = &decoded {
                    assert!(
                        codec::is_known_method(request.method()),
                        "decoded a request whose method `{}` is not known",
                        request.method()
                    );
                }
                round_trip_client(&decoded);
            }
            Ok(ClientInput::BadRequest { error, .. }) => {
                assert!(!error.is_empty(), "bad request without an explanation");
            }
            Err(e) => {
                let _ = e.reason();
            }
        }
        if let Ok(decoded) = codec::decode::<ServerFrame>(frame) {
            round_trip_server(&decoded);
        }
    }
}

/// Parse `data` as a configuration file (when it is UTF-8) for every section, and look
/// up a key path in it.
///
/// Panics (a bug) if parsing or locating panics, or if a refused file comes back
/// without a mistake or with a mistake placed at line or column 0.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = Config::parse(text, Path::new("fuzz.yaml"), Role::Any) {
        assert!(
            !errors.0.is_empty(),
            "a refused config must name at least one mistake"
        );
        for e in &errors.0 {
            assert!(
                e.line != Some(0) && e.column != Some(0),
                "lines and columns are 1-based: {e:?}"
            );
        }
        let _ = errors.to_string();
    }
    if let Some((line, column)) = config::locate(text, "control.media_nodes[0].name") {
        assert!(
            line >= 1 && column >= 1,
            "locate returned a 0-based place ({line}, {column})"
        );
    }
}

/// What a [`FrameDecoder`] made of one stream.
#[derive(Debug)]
struct Reassembled {
    frames: Vec<Vec<u8>>,
    /// The error that ended the stream, if any (after it the stream is not read further).
    error: Option<FrameError>,
    /// Whether bytes of an incomplete frame were left buffered at the end.
    partial: bool,
}

/// Push `data` into a fresh decoder `chunk` bytes at a time, draining frames after each
/// push the way the connection loop does, and stop at the first error.
fn reassemble(data: &[u8], chunk: usize) -> Reassembled {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut frames = Vec::new();
    let mut error = None;
    'stream: for piece in data.chunks(chunk.max(1)) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'stream;
                }
            }
        }
    }
    let partial = decoder.has_partial();
    Reassembled {
        frames,
        error,
        partial,
    }
}

/// Encode `frame` and reassemble it through a fresh decoder: the bytes a peer would get.
fn wire_payload(frame: Vec<u8>) -> Vec<u8> {
    let mut decoder = FrameDecoder::new(usize::MAX);
    decoder.push(&frame);
    match decoder.next_frame() {
        Ok(Some(payload)) => {
            assert!(
                !decoder.has_partial(),
                "an encoded frame left bytes behind after its payload"
            );
            payload
        }
        other => panic!("an encoded frame did not reassemble: {other:?}"),
    }
}

fn round_trip_client(decoded: &ClientFrame) {
    let payload = wire_payload(codec::encode(decoded));
    match codec::decode_client(&payload) {
        Ok(ClientInput::Frame(again)) => {
            assert_eq!(&again, decoded, "client frame changed across encode/decode")
        }
        other => panic!("re-encoded client frame {decoded:?} decoded as {other:?}"),
    }
}

fn round_trip_server(decoded: &ServerFrame) {
    let payload = wire_payload(codec::encode(decoded));
    match codec::decode::<ServerFrame>(&payload) {
        Ok(again) => assert_eq!(&again, decoded, "server frame changed across encode/decode"),
        Err(e) => panic!("re-encoded server frame {decoded:?} did not decode: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::msg::Request;

    #[test]
    fn valid_stream_and_garbage_do_not_panic() {
        let mut stream = codec::encode(&ClientFrame::Request {
            id: 1,
            request: Request::Ping,
        });
        stream.extend_from_slice(&[0, 0, 0, 5, b'{', b'"', 0xff]);
        rpc_frame(&stream);
        rpc_frame(&[0, 0, 0, 0]);
        rpc_frame(&[0xff; 9]);
        rpc_frame(&[]);
    }

    #[test]
    fn configs_do_not_panic() {
        config(b"control:\n  node_id: c\n  media_nodes:\n    - name: a\n      unix: /x\n");
        config(b"\xff\xfe");
        config(b"[[[[[[");
        config(b"");
    }
}
