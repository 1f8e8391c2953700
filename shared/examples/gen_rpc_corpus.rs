//! Writes the seed corpus of the `rpc_frame` fuzz target: real encodings of every RPC
//! frame kind, plus the stream shapes the decoder must refuse or wait on.
//!
//! ```text
//! cargo run -p sbc-shared --example gen_rpc_corpus [-- OUT_DIR]
//! ```
//!
//! `OUT_DIR` defaults to `fuzz/corpus/rpc_frame` of this checkout. Files are named by
//! what they hold; `client-*` files are streams of whole [`ClientFrame`]s and `server-*`
//! files of whole [`ServerFrame`]s (the corpus replay test checks that they still
//! decode, so a changed wire format shows up as "regenerate the corpus"). Output is
//! deterministic: rerunning it on an unchanged protocol changes no file. Files this
//! program does not write (inputs the fuzzer found) are left alone.
//!
//! Each message is written as JSON, decoded into the real message type and encoded
//! again with [`encode`]: the seeds are exactly what a peer sends, fields added to the
//! protocol with a default appear in them after a rerun, and such additions do not
//! break this program. A message the types no longer accept stops it with its name.

use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use sbc_shared::rpc::PROTOCOL_VERSION;
use sbc_shared::rpc::codec::{DEFAULT_MAX_FRAME_LEN, encode};
use sbc_shared::rpc::msg::{ClientFrame, LegStats, NodeStats, ServerFrame};

/// The session every seed talks about (`123456789abcdef0`).
const SESSION: u64 = 0x1234_5678_9abc_def0;

/// `json` decoded as a `T` and encoded as one frame; panics naming `seed` if the
/// message types no longer accept it.
fn frame<T: DeserializeOwned + Serialize>(seed: &str, json: Value) -> Vec<u8> {
    match serde_json::from_value::<T>(json) {
        Ok(msg) => encode(&msg),
        Err(e) => panic!("seed {seed}: the message types no longer accept it: {e}"),
    }
}

fn client(seed: &str, json: Value) -> Vec<u8> {
    frame::<ClientFrame>(seed, json)
}

fn server(seed: &str, json: Value) -> Vec<u8> {
    frame::<ServerFrame>(seed, json)
}

fn request(seed: &str, id: u64, request: Value) -> Vec<u8> {
    client(
        seed,
        json!({"type": "request", "id": id, "request": request}),
    )
}

fn response(seed: &str, id: u64, ok: Value) -> Vec<u8> {
    server(
        seed,
        json!({"type": "response", "id": id, "result": {"ok": ok}}),
    )
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("message parts always serialise")
}

/// A length prefix followed by `payload` (for payloads `encode` would never produce).
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("seed payloads are tiny");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

#[allow(
    clippy::needless_update,
    reason = "counters added to the protocol later default to zero here"
)]
fn leg_stats() -> Value {
    to_json(&LegStats {
        packets_in: 3050,
        bytes_in: 524_600,
        packets_out: 3049,
        bytes_out: 524_428,
        packets_dropped: 1,
        ..LegStats::default()
    })
}

fn session_info() -> Value {
    json!({
        "id": SESSION,
        "owner": "ctl-1",
        "owner_data": r#"{"call":"a84b4c76e66710"}"#,
        "state": "orphaned",
        "age_ms": 61_000,
        "idle_ms": 20,
        "reap_in_ms": 29_500,
        "legs": [
            {
                "leg": 0,
                "interface": "public",
                "local_rtp": "203.0.113.10:30000",
                "local_rtcp": "203.0.113.10:30001",
                "remote_rtp": "198.51.100.7:49170",
                "remote_rtcp": null,
                "stats": leg_stats(),
            },
            {
                "leg": 1,
                "interface": "core-v6",
                "local_rtp": "[2001:db8::10]:31000",
                "local_rtcp": "[2001:db8::10]:31001",
                "remote_rtp": "[2001:db8::99]:5004",
                "remote_rtcp": "[2001:db8::99]:5005",
                "stats": to_json(&LegStats::default()),
            },
        ],
    })
}

#[allow(
    clippy::needless_update,
    reason = "figures added to NodeStats later default to zero here"
)]
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hello = client(
        "hello",
        json!({
            "type": "hello",
            "protocol_version": PROTOCOL_VERSION,
            "software": "sbc-control 0.1.0",
            "role": "control",
            "owner": "ctl-1",
        }),
    );
    let ping = request("ping", 2, json!({"method": "ping"}));

    vec![
        // Client → server: the hello of each role and one request of every method.
        ("client-hello-control.bin", hello.clone()),
        (
            "client-hello-observer.bin",
            client(
                "observer hello",
                json!({
                    "type": "hello",
                    "protocol_version": PROTOCOL_VERSION,
                    "software": "sbc-media status 0.1.0",
                    "role": "observer",
                    "owner": "observer",
                }),
            ),
        ),
        (
            "client-create-session.bin",
            request(
                "create_session",
                1,
                json!({
                    "method": "create_session",
                    "owner_data": r#"{"call":"a84b4c76e66710"}"#,
                    "legs": [
                        {
                            "interface": "public",
                            "remote_rtp": "198.51.100.7:49170",
                            "latch": "signalled_ip",
                            "clock_rate": 48000,
                        },
                        {"interface": "core-v6", "remote_rtcp": "[2001:db8::99]:5005"},
                    ],
                    "inactivity_timeout_ms": 90_000,
                }),
            ),
        ),
        (
            "client-update-session.bin",
            request(
                "update_session",
                3,
                json!({
                    "method": "update_session",
                    "session": SESSION,
                    "update": {
                        "owner_data": "{}",
                        "legs": [{
                            "leg": 1,
                            "remote_rtp": "192.0.2.1:4000",
                            "remote_rtcp": "192.0.2.1:4001",
                        }],
                    },
                }),
            ),
        ),
        (
            "client-delete-session.bin",
            request(
                "delete_session",
                4,
                json!({"method": "delete_session", "session": SESSION}),
            ),
        ),
        (
            "client-get-session.bin",
            request(
                "get_session",
                5,
                json!({"method": "get_session", "session": SESSION}),
            ),
        ),
        (
            "client-list-sessions.bin",
            request(
                "list_sessions",
                6,
                json!({"method": "list_sessions", "owner": "ctl-1", "after": 7, "limit": 100}),
            ),
        ),
        (
            "client-adopt-sessions.bin",
            request(
                "adopt_sessions",
                7,
                json!({"method": "adopt_sessions", "sessions": [SESSION, u64::MAX]}),
            ),
        ),
        (
            "client-stats.bin",
            request("stats", 8, json!({"method": "stats"})),
        ),
        ("client-ping.bin", ping.clone()),
        // Server → client: hello answers, one response of every kind, an error, events.
        (
            "server-hello-ack.bin",
            server(
                "hello_ack",
                json!({
                    "type": "hello_ack",
                    "protocol_version": PROTOCOL_VERSION,
                    "software": "sbc-media 0.1.0",
                    "node_name": "local",
                    "orphan_grace_ms": 30_000,
                    "interfaces": ["public", "core-v6"],
                }),
            ),
        ),
        (
            "server-hello-reject.bin",
            server(
                "hello_reject",
                json!({
                    "type": "hello_reject",
                    "protocol_version": PROTOCOL_VERSION,
                    "reason": "client speaks protocol 2, this node speaks 1",
                }),
            ),
        ),
        (
            "server-response-session.bin",
            response("session", 1, {
                let mut v = session_info();
                v["kind"] = json!("session");
                v
            }),
        ),
        (
            "server-response-deleted.bin",
            response(
                "deleted",
                4,
                json!({"kind": "deleted", "session": SESSION, "legs": [leg_stats(), leg_stats()]}),
            ),
        ),
        (
            "server-response-sessions.bin",
            response(
                "sessions",
                6,
                json!({"kind": "sessions", "sessions": [session_info()], "next": SESSION}),
            ),
        ),
        (
            "server-response-adopted.bin",
            response(
                "adopted",
                7,
                json!({"kind": "adopted", "adopted": [SESSION], "refused": [u64::MAX]}),
            ),
        ),
        (
            "server-response-stats.bin",
            response("stats", 8, {
                let mut v = to_json(&NodeStats {
                    software: "sbc-media 0.1.0".into(),
                    node_name: "local".into(),
                    protocol_version: PROTOCOL_VERSION,
                    uptime_ms: 3_600_000,
                    sessions_owned: 10,
                    sessions_orphaned: 2,
                    ports_in_use: 24,
                    ports_free: 476,
                    sessions_created_total: 1000,
                    sessions_reaped_unclaimed_total: 3,
                    sessions_reaped_inactive_total: 5,
                    control_connections: 1,
                    ..NodeStats::default()
                });
                v["kind"] = json!("stats");
                v
            }),
        ),
        (
            "server-response-pong.bin",
            response("pong", 2, json!({"kind": "pong"})),
        ),
        (
            "server-response-error.bin",
            server(
                "error",
                json!({
                    "type": "response",
                    "id": 9,
                    "result": {"error": {
                        "code": "ports_exhausted",
                        "message": "no free port pair on interface `public`",
                    }},
                }),
            ),
        ),
        (
            "server-event-session-ended.bin",
            server(
                "session_ended",
                json!({"type": "event", "event": {
                    "event": "session_ended",
                    "session": SESSION,
                    "reason": "inactive",
                    "legs": [leg_stats()],
                }}),
            ),
        ),
        (
            "server-event-leg-state.bin",
            server(
                "leg_state_changed",
                json!({"type": "event", "event": {
                    "event": "leg_state_changed",
                    "session": SESSION,
                    "leg": 0,
                    "state": "active",
                }}),
            ),
        ),
        // Streams: several frames back to back, and a frame cut short.
        ("stream-hello-then-ping.bin", [&hello[..], &ping].concat()),
        (
            "stream-truncated-frame.bin",
            hello[..hello.len() / 2].to_vec(),
        ),
        // Refused by the decoder before any payload is buffered.
        (
            "bad-oversized-prefix.bin",
            [&[0xff, 0xff, 0xff, 0xff][..], b"{}"].concat(),
        ),
        (
            "bad-just-over-limit.bin",
            [
                &u32::try_from(DEFAULT_MAX_FRAME_LEN + 1)
                    .expect("the limit fits a prefix")
                    .to_be_bytes()[..],
                b"{",
            ]
            .concat(),
        ),
        ("bad-zero-length.bin", [&[0, 0, 0, 0][..], &ping].concat()),
        // Frames that decode to nothing, or to a request the server answers with an error.
        ("bad-not-json.bin", raw_frame(b"\xff\x00not json at all")),
        (
            "bad-unknown-method.bin",
            raw_frame(br#"{"type":"request","id":9,"request":{"method":"teleport"}}"#),
        ),
        (
            "bad-request-fields.bin",
            raw_frame(
                br#"{"type":"request","id":10,"request":{"method":"get_session","session":"x"}}"#,
            ),
        ),
        (
            "bad-unknown-type.bin",
            raw_frame(br#"{"type":"launch","id":1}"#),
        ),
    ]
}

fn main() -> std::io::Result<()> {
    let out = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/rpc_frame"),
    };
    std::fs::create_dir_all(&out)?;
    let seeds = seeds();
    for (name, bytes) in &seeds {
        std::fs::write(out.join(name), bytes)?;
    }
    println!("wrote {} seeds to {}", seeds.len(), out.display());
    Ok(())
}
