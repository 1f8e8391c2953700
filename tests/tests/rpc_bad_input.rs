//! A real `sbc-media` facing hostile or broken RPC peers over its Unix socket: oversized,
//! empty, non-JSON and unknown-type frames, a peer that stalls mid-frame or hangs up
//! mid-frame, a request before the hello, and a peer that never says hello. Each such
//! connection is closed and counted by reason; answerable mistakes (an unknown method,
//! an observer trying to write) get an error response on a connection that stays up.
//! Throughout, a control plane's connection and its sessions are untouched.

#![allow(
    clippy::disallowed_methods,
    reason = "end-to-end tests wait in real time"
)]

use std::time::{Duration, Instant};

use sbc_e2e::{Appliance, Proc, Settings, metric, wait_for};
use sbc_shared::ids::OwnerTag;
use sbc_shared::rpc::client::{CallError, RpcClient};
use sbc_shared::rpc::codec::{DEFAULT_MAX_FRAME_LEN, decode, encode};
use sbc_shared::rpc::msg::{
    ClientFrame, ErrorCode, Hello, LegSpec, PROTOCOL_VERSION, PeerRole, Request, Response,
    RpcResult, ServerFrame, SessionSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Bound on every single read or write in this file.
const IO_WAIT: Duration = Duration::from_secs(5);

fn hello(role: PeerRole, owner: &str) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        software: "e2e-test".into(),
        role,
        owner: OwnerTag(owner.into()),
    }
}

/// A length prefix and `payload`, however wrong the payload is.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small test payload");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

async fn connect_raw(app: &Appliance) -> UnixStream {
    tokio::time::timeout(IO_WAIT, UnixStream::connect(&app.media_socket))
        .await
        .expect("connect within 5s")
        .expect("connect to sbc-media")
}

async fn send(s: &mut UnixStream, bytes: &[u8]) {
    tokio::time::timeout(IO_WAIT, s.write_all(bytes))
        .await
        .expect("write within 5s")
        .expect("write to sbc-media");
}

/// Read one whole server frame.
async fn read_frame(s: &mut UnixStream) -> ServerFrame {
    let read = async {
        let mut header = [0u8; 4];
        s.read_exact(&mut header).await?;
        let len = u32::from_be_bytes(header) as usize;
        assert!(
            len > 0 && len <= DEFAULT_MAX_FRAME_LEN,
            "server frame of {len} bytes"
        );
        let mut payload = vec![0; len];
        s.read_exact(&mut payload).await?;
        Ok::<_, std::io::Error>(payload)
    };
    let payload = tokio::time::timeout(IO_WAIT, read)
        .await
        .expect("a server frame within 5s")
        .expect("reading a server frame");
    decode::<ServerFrame>(&payload).expect("server frames decode")
}

/// A raw connection that has said hello and read the server's `HelloAck`.
async fn connect_hello(app: &Appliance, role: PeerRole, owner: &str) -> UnixStream {
    let mut s = connect_raw(app).await;
    send(&mut s, &encode(&ClientFrame::Hello(hello(role, owner)))).await;
    match read_frame(&mut s).await {
        ServerFrame::HelloAck(ack) => assert_eq!(ack.protocol_version, PROTOCOL_VERSION),
        other => panic!("expected HelloAck, got {other:?}"),
    }
    s
}

/// Wait until the server closes the connection (EOF, or a reset because it left our
/// bytes unread); returns whatever it sent before closing and how long that took.
async fn expect_closed(s: &mut UnixStream, within: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!("sbc-media did not close the connection within {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn closed(app: &Appliance, reason: &str) -> f64 {
    let sample = format!("sbc_rpc_connections_closed_total{{reason=\"{reason}\"}}");
    metric(&app.media_page(), &sample).unwrap_or(0.0)
}

fn wait_closed(app: &Appliance, reason: &str, count: f64) {
    wait_for(
        Duration::from_secs(5),
        &format!("{count} connections closed as {reason}"),
        || (closed(app, reason) == count).then_some(()),
    );
}

fn expect_response(frame: ServerFrame, want_id: u64) -> RpcResult {
    match frame {
        ServerFrame::Response { id, result } => {
            assert_eq!(id, want_id, "the response echoes the request id");
            result
        }
        other => panic!("expected a response to request {want_id}, got {other:?}"),
    }
}

/// The control plane whose sessions must survive everything below.
struct Victim {
    client: RpcClient,
    _events: tokio::sync::mpsc::Receiver<sbc_shared::rpc::msg::Event>,
}

impl Victim {
    async fn connect(app: &Appliance) -> Victim {
        let stream = connect_raw(app).await;
        let (r, w) = stream.into_split();
        let (client, events) =
            RpcClient::handshake(r, w, hello(PeerRole::Control, "ctl-x"), IO_WAIT)
                .await
                .expect("control hello accepted");
        Victim {
            client,
            _events: events,
        }
    }

    /// Still connected, still answering, still owning exactly its 3 sessions.
    async fn assert_unharmed(&self, app: &Appliance, media: &mut Proc, after: &str) {
        assert!(
            media.is_running(),
            "sbc-media died after {after}; log:\n{}",
            media.log_text()
        );
        assert!(
            self.client.is_open(),
            "control connection dropped after {after}"
        );
        let pong = self.client.call(Request::Ping).await;
        assert!(
            matches!(pong, Ok(Response::Pong)),
            "ping after {after}: {pong:?}"
        );
        let list = self
            .client
            .call(Request::ListSessions {
                owner: Some(OwnerTag("ctl-x".into())),
                after: None,
                limit: 100,
            })
            .await
            .unwrap_or_else(|e| panic!("list after {after}: {e}"));
        let Response::Sessions { sessions, next } = list else {
            panic!("list after {after}: not a session list: {list:?}")
        };
        assert_eq!(sessions.len(), 3, "sessions after {after}");
        assert!(next.is_none());
        let page = app.media_page();
        assert_eq!(
            metric(&page, "sbc_media_sessions{state=\"owned\"}"),
            Some(3.0),
            "after {after}"
        );
        assert_eq!(
            metric(&page, "sbc_media_sessions{state=\"orphaned\"}"),
            Some(0.0),
            "after {after}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frames_close_only_the_offending_connection() {
    let app = Appliance::new(&Settings {
        ports: 100,
        ..Settings::default()
    });
    let mut media = app.start_media();

    let victim = Victim::connect(&app).await;
    for i in 0..3 {
        let spec = SessionSpec {
            owner_data: format!("{{\"victim\":{i}}}"),
            legs: vec![LegSpec {
                interface: "lo".into(),
                remote_rtp: None,
                remote_rtcp: None,
                latch: Default::default(),
                clock_rate: None,
            }],
            inactivity_timeout_ms: None,
        };
        let created = victim
            .client
            .call(Request::CreateSession(spec))
            .await
            .expect("create");
        assert!(matches!(created, Response::Session(_)), "{created:?}");
    }
    victim.assert_unharmed(&app, &mut media, "setup").await;

    // 1. A length prefix one byte over max_frame_len (4 MiB by default): refused on the
    //    header alone, before any payload is sent or buffered.
    let mut s = connect_hello(&app, PeerRole::Observer, "attacker").await;
    let too_big = u32::try_from(DEFAULT_MAX_FRAME_LEN + 1).expect("fits");
    send(&mut s, &too_big.to_be_bytes()).await;
    let (rest, took) = expect_closed(&mut s, Duration::from_secs(3)).await;
    assert!(
        rest.is_empty(),
        "no answer to an oversized frame, got {} bytes",
        rest.len()
    );
    assert!(
        took < Duration::from_secs(1),
        "closed on the header, without waiting for a payload ({took:?})"
    );
    wait_closed(&app, "too_large", 1.0);
    victim
        .assert_unharmed(&app, &mut media, "an oversized frame")
        .await;

    // The same before any hello.
    let mut s = connect_raw(&app).await;
    send(&mut s, &u32::MAX.to_be_bytes()).await;
    expect_closed(&mut s, Duration::from_secs(3)).await;
    wait_closed(&app, "too_large", 2.0);

    // 2. A zero-length frame.
    let mut s = connect_hello(&app, PeerRole::Control, "attacker").await;
    send(&mut s, &[0, 0, 0, 0]).await;
    expect_closed(&mut s, Duration::from_secs(3)).await;
    wait_closed(&app, "empty", 1.0);
    victim
        .assert_unharmed(&app, &mut media, "an empty frame")
        .await;

    // 3. A frame that is not JSON at all.
    let mut s = connect_hello(&app, PeerRole::Observer, "attacker").await;
    send(&mut s, &frame(b"\xff\x00not json at all")).await;
    expect_closed(&mut s, Duration::from_secs(3)).await;
    wait_closed(&app, "malformed", 1.0);
    victim
        .assert_unharmed(&app, &mut media, "a non-JSON frame")
        .await;

    // 4. JSON, but a frame type nobody knows.
    let mut s = connect_hello(&app, PeerRole::Control, "attacker").await;
    send(&mut s, &frame(br#"{"type":"launch","id":1}"#)).await;
    expect_closed(&mut s, Duration::from_secs(3)).await;
    wait_closed(&app, "malformed", 2.0);
    victim
        .assert_unharmed(&app, &mut media, "an unknown frame type")
        .await;

    // 5. Part of a frame, then silence: closed after stall_timeout (1s in the test config).
    let mut s = connect_hello(&app, PeerRole::Observer, "attacker").await;
    let mut partial = 100u32.to_be_bytes().to_vec();
    partial.extend_from_slice(br#"{"type":"re"#);
    send(&mut s, &partial).await;
    let (_, took) = expect_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(900),
        "closed before the 1s stall timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "stall timeout is 1s, closed only after {took:?}"
    );
    wait_closed(&app, "stalled", 1.0);
    victim
        .assert_unharmed(&app, &mut media, "a stalled peer")
        .await;

    // 6. Part of a frame, then a hang-up.
    let mut s = connect_hello(&app, PeerRole::Observer, "attacker").await;
    send(&mut s, &partial).await;
    s.shutdown().await.expect("shutdown our write side");
    expect_closed(&mut s, Duration::from_secs(3)).await;
    wait_closed(&app, "truncated", 1.0);

    // 7. A request as the first frame: answered with a HelloReject, then closed.
    let mut s = connect_raw(&app).await;
    send(
        &mut s,
        &encode(&ClientFrame::Request {
            id: 1,
            request: Request::Ping,
        }),
    )
    .await;
    match read_frame(&mut s).await {
        ServerFrame::HelloReject(r) => {
            assert_eq!(r.protocol_version, PROTOCOL_VERSION);
            assert!(
                r.reason.contains("first frame must be a hello"),
                "{}",
                r.reason
            );
        }
        other => panic!("expected HelloReject, got {other:?}"),
    }
    let (rest, _) = expect_closed(&mut s, Duration::from_secs(3)).await;
    assert!(rest.is_empty(), "nothing after the HelloReject");
    wait_closed(&app, "bad_hello", 1.0);
    victim
        .assert_unharmed(&app, &mut media, "a request before hello")
        .await;

    // 8. An unknown method is answered, and the connection stays usable.
    let mut s = connect_hello(&app, PeerRole::Control, "newer-client").await;
    send(
        &mut s,
        &frame(br#"{"type":"request","id":7,"request":{"method":"teleport","to":"mars"}}"#),
    )
    .await;
    match expect_response(read_frame(&mut s).await, 7) {
        RpcResult::Error(e) => {
            assert_eq!(e.code, ErrorCode::UnknownMethod, "{e}");
            assert!(e.message.contains("teleport"), "{e}");
        }
        RpcResult::Ok(r) => panic!("teleport succeeded: {r:?}"),
    }
    // A known method with broken fields is answered too (invalid_request).
    send(
        &mut s,
        &frame(br#"{"type":"request","id":8,"request":{"method":"get_session","session":"nope"}}"#),
    )
    .await;
    match expect_response(read_frame(&mut s).await, 8) {
        RpcResult::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}"),
        RpcResult::Ok(r) => panic!("a malformed get_session succeeded: {r:?}"),
    }
    send(
        &mut s,
        &encode(&ClientFrame::Request {
            id: 9,
            request: Request::Ping,
        }),
    )
    .await;
    match expect_response(read_frame(&mut s).await, 9) {
        RpcResult::Ok(Response::Pong) => {}
        other => panic!("expected pong, got {other:?}"),
    }
    let page = app.media_page();
    assert_eq!(
        metric(
            &page,
            "sbc_rpc_requests_total{method=\"unknown\",result=\"unknown_method\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "sbc_rpc_requests_total{method=\"unknown\",result=\"invalid_request\"}"
        ),
        Some(1.0)
    );
    drop(s);
    wait_closed(&app, "peer_closed", 1.0);

    // 9. An observer may read but not write.
    let observer = {
        let (r, w) = connect_raw(&app).await.into_split();
        RpcClient::handshake(r, w, hello(PeerRole::Observer, "operator"), IO_WAIT)
            .await
            .expect("observer hello accepted")
            .0
    };
    let spec = SessionSpec {
        owner_data: String::new(),
        legs: vec![LegSpec {
            interface: "lo".into(),
            remote_rtp: None,
            remote_rtcp: None,
            latch: Default::default(),
            clock_rate: None,
        }],
        inactivity_timeout_ms: None,
    };
    match observer.call(Request::CreateSession(spec)).await {
        Err(CallError::Rpc(e)) => assert_eq!(e.code, ErrorCode::ReadOnly, "{e}"),
        other => panic!("observer create_session: expected read_only, got {other:?}"),
    }
    assert!(
        matches!(observer.call(Request::Ping).await, Ok(Response::Pong)),
        "observer still connected"
    );
    let page = app.media_page();
    assert_eq!(
        metric(
            &page,
            "sbc_rpc_requests_total{method=\"create_session\",result=\"read_only\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, "sbc_media_sessions_created_total"),
        Some(3.0),
        "no session was created by an attacker"
    );
    drop(observer);

    // The end: the process, the control connection and its sessions are as they were,
    // and only the victim's control connection is left open.
    victim
        .assert_unharmed(&app, &mut media, "all of the above")
        .await;
    wait_for(Duration::from_secs(5), "only the victim connected", || {
        let page = app.media_page();
        let control = metric(
            &page,
            "sbc_rpc_connections{role=\"control\",transport=\"unix\"}",
        )?;
        let observers = metric(
            &page,
            "sbc_rpc_connections{role=\"observer\",transport=\"unix\"}",
        )?;
        (control == 1.0 && observers == 0.0).then_some(())
    });
    let page = app.media_page();
    assert_eq!(metric(&page, "sbc_media_control_connections"), Some(1.0));
    for (reason, n) in [
        ("too_large", 2.0),
        ("empty", 1.0),
        ("malformed", 2.0),
        ("stalled", 1.0),
        ("truncated", 1.0),
        ("bad_hello", 1.0),
    ] {
        assert_eq!(closed(&app, reason), n, "closed as {reason}");
    }
}

/// A peer that connects and never says hello is dropped after the 10s hello timeout.
/// It runs beside the test above (cargo runs test functions in parallel), so its
/// wait costs little.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_dropped_after_hello_timeout() {
    let app = Appliance::new(&Settings {
        ports: 10,
        ..Settings::default()
    });
    let mut media = app.start_media();

    // Silent from the first byte: no stall timer (nothing partial), only the hello timer.
    let mut silent = connect_raw(&app).await;
    // Hung up before the hello: counted separately.
    drop(connect_raw(&app).await);
    wait_closed(&app, "closed_before_hello", 1.0);

    let (rest, took) = expect_closed(&mut silent, Duration::from_secs(15)).await;
    assert!(
        rest.is_empty(),
        "nothing is sent to a peer that never said hello"
    );
    assert!(
        took >= Duration::from_secs(9),
        "dropped before the 10s hello timeout: {took:?}"
    );
    wait_closed(&app, "hello_timeout", 1.0);
    assert!(media.is_running());
    assert!(
        media.log_text().contains("no hello within 10s"),
        "{}",
        media.log_text()
    );
}
