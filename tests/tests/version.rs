//! An RPC protocol version mismatch is reported clearly at both ends: a client speaking
//! a newer version to the real `sbc-media` is told so in a `HelloReject` (and the media
//! node logs and counts it); the real `sbc-control` talking to a (fake) media node that
//! speaks a newer version, or that refuses it, says so in its log, its metrics and
//! `sbcctl status`, and keeps retrying.

#![allow(
    clippy::disallowed_methods,
    reason = "end-to-end tests wait in real time"
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sbc_e2e::{Appliance, Proc, Settings, bin, metric, scrape, text, wait_for};
use sbc_shared::ids::OwnerTag;
use sbc_shared::rpc::client::{ConnectError, RpcClient};
use sbc_shared::rpc::codec::{DEFAULT_MAX_FRAME_LEN, decode, encode};
use sbc_shared::rpc::msg::{
    ClientFrame, Hello, HelloAck, HelloReject, PROTOCOL_VERSION, PeerRole, Request, Response,
    ServerFrame,
};
use sbc_shared::rpc::stream::{FrameReader, FrameWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const IO_WAIT: Duration = Duration::from_secs(5);

fn hello(version: u16, role: PeerRole) -> Hello {
    Hello {
        protocol_version: version,
        software: "e2e-test".into(),
        role,
        owner: OwnerTag("ctl-future".into()),
    }
}

async fn connect(app: &Appliance) -> UnixStream {
    tokio::time::timeout(IO_WAIT, UnixStream::connect(&app.media_socket))
        .await
        .expect("connect within 5s")
        .expect("connect to sbc-media")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_node_tells_a_newer_client_which_versions_disagree() {
    let app = Appliance::new(&Settings {
        ports: 10,
        ..Settings::default()
    });
    let mut media = app.start_media();

    // Raw: a hello saying version 2 is answered with a HelloReject, then the connection closes.
    let mut s = connect(&app).await;
    let frame = encode(&ClientFrame::Hello(hello(2, PeerRole::Control)));
    tokio::time::timeout(IO_WAIT, s.write_all(&frame))
        .await
        .expect("write within 5s")
        .expect("write");
    let mut received = Vec::new();
    tokio::time::timeout(IO_WAIT, s.read_to_end(&mut received))
        .await
        .expect("sbc-media closes the connection after its HelloReject")
        .expect("read until EOF");
    let (header, payload) = received
        .split_at_checked(4)
        .expect("at least a frame header");
    let len = u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize;
    assert_eq!(len, payload.len(), "exactly one frame, then EOF");
    let reject = match decode::<ServerFrame>(payload).expect("a server frame") {
        ServerFrame::HelloReject(r) => r,
        other => panic!("expected HelloReject, got {other:?}"),
    };
    assert_eq!(
        reject.protocol_version, PROTOCOL_VERSION,
        "the reject says which version the node speaks"
    );
    assert!(
        reject.reason.contains("speaks version 2"),
        "{}",
        reject.reason
    );
    assert!(reject.reason.contains("version 1"), "{}", reject.reason);
    assert!(
        reject.reason.contains("e2e-test"),
        "names the peer's software: {}",
        reject.reason
    );
    wait_for(Duration::from_secs(5), "version_mismatch counted", || {
        let page = scrape(app.media_metrics)?;
        (metric(
            &page,
            "sbc_rpc_connections_closed_total{reason=\"version_mismatch\"}",
        )? == 1.0)
            .then_some(())
    });

    // Through the client library: a `Rejected` error whose text an operator can act on.
    let (r, w) = connect(&app).await.into_split();
    let err = RpcClient::handshake(r, w, hello(2, PeerRole::Control), IO_WAIT)
        .await
        .expect_err("a version-2 hello must be refused");
    let ConnectError::Rejected {
        reason,
        server_version,
    } = &err
    else {
        panic!("expected ConnectError::Rejected, got {err:?}")
    };
    assert_eq!(*server_version, 1);
    assert!(
        reason.contains("speaks version 2") && reason.contains("version 1"),
        "{reason}"
    );
    let shown = err.to_string();
    assert!(
        shown.contains("media node refused the connection"),
        "{shown}"
    );
    assert!(shown.contains("RPC protocol version mismatch"), "{shown}");
    assert!(
        shown.contains("speaks version 2") && shown.contains("speaks version 1"),
        "{shown}"
    );
    assert!(shown.contains("upgrade the older side"), "{shown}");

    // The media node's own log says the same sentence.
    let log = wait_for(
        Duration::from_secs(5),
        "the mismatch in the sbc-media log",
        || {
            let log = media.log_text();
            (log.matches("speaks version 2").count() >= 2).then_some(log)
        },
    );
    assert!(log.contains("RPC protocol version mismatch"), "{log}");
    assert!(log.contains("this sbc-media"), "{log}");
    let page = app.media_page();
    assert_eq!(
        metric(
            &page,
            "sbc_rpc_connections_closed_total{reason=\"version_mismatch\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &page,
            "sbc_rpc_connections_closed_total{reason=\"bad_hello\"}"
        ),
        Some(0.0)
    );

    // A version-1 client is still welcome.
    let (r, w) = connect(&app).await.into_split();
    let (client, _events) =
        RpcClient::handshake(r, w, hello(PROTOCOL_VERSION, PeerRole::Observer), IO_WAIT)
            .await
            .expect("a version-1 hello is accepted");
    assert!(matches!(
        client.call(Request::Ping).await,
        Ok(Response::Pong)
    ));
    assert!(media.is_running());
}

/// A fake media node on `listener`: reads each connection's hello, records it, answers
/// `answer`, and keeps the connection until the peer closes it.
fn fake_media_node(listener: UnixListener, answer: ServerFrame) -> Arc<Mutex<Vec<Hello>>> {
    let hellos = Arc::new(Mutex::new(Vec::new()));
    let seen = hellos.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let (r, w) = stream.into_split();
                let mut reader = FrameReader::new(r, DEFAULT_MAX_FRAME_LEN, IO_WAIT);
                let mut writer = FrameWriter::new(w);
                let Ok(Ok(Some(frame))) = tokio::time::timeout(IO_WAIT, reader.read_frame()).await
                else {
                    return;
                };
                if let Ok(ClientFrame::Hello(h)) = decode::<ClientFrame>(&frame) {
                    seen.lock().expect("not poisoned").push(h);
                }
                if writer.write_msg(&answer).await.is_err() {
                    return;
                }
                // Hold the connection until the control plane drops it.
                while let Ok(Ok(Some(_))) =
                    tokio::time::timeout(Duration::from_secs(30), reader.read_frame()).await
                {
                }
            });
        }
    });
    hellos
}

/// Start `sbc-control` against the fake node (not via `Appliance::start_control`, which
/// waits for a connection that never comes) and wait for `result` to be counted.
fn start_control_until(app: &Appliance, result: &str) -> (Proc, String) {
    let control = Proc::spawn(
        "sbc-control",
        &bin("sbc-control"),
        &["--config", app.config_str()],
        app.path(),
        app.path().join("control.log"),
    );
    let sample = format!("sbc_media_node_connects_total{{node=\"local\",result=\"{result}\"}}");
    let page = wait_for(
        Duration::from_secs(20),
        &format!("a connect attempt counted as {result}"),
        || {
            let page = scrape(app.control_metrics)?;
            (metric(&page, &sample)? >= 1.0).then_some(page)
        },
    );
    (control, page)
}

fn assert_hellos_were_ours(hellos: &Mutex<Vec<Hello>>) {
    let hellos = hellos.lock().expect("not poisoned");
    assert!(!hellos.is_empty(), "the fake node received a hello");
    for h in hellos.iter() {
        assert_eq!(h.protocol_version, PROTOCOL_VERSION);
        assert_eq!(h.role, PeerRole::Control);
        assert_eq!(h.owner, OwnerTag("ctl-test".into()));
        assert!(h.software.starts_with("sbc-control "), "{}", h.software);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_reports_a_media_node_speaking_a_newer_version() {
    let app = Appliance::new(&Settings {
        ports: 10,
        ..Settings::default()
    });
    let listener = UnixListener::bind(&app.media_socket).expect("bind the fake media socket");
    let hellos = fake_media_node(
        listener,
        ServerFrame::HelloAck(HelloAck {
            protocol_version: 2,
            software: "sbc-media 9.0.0".into(),
            node_name: "future-node".into(),
            orphan_grace_ms: 30_000,
            interfaces: vec!["lo".into()],
        }),
    );
    let mut control = {
        let (control, page) = start_control_until(&app, "version_mismatch");
        assert_eq!(
            metric(&page, "sbc_media_node_up{node=\"local\"}"),
            Some(0.0)
        );
        assert_eq!(
            metric(
                &page,
                "sbc_media_node_connects_total{node=\"local\",result=\"ok\"}"
            ),
            Some(0.0)
        );
        control
    };
    assert_hellos_were_ours(&hellos);

    let log = wait_for(
        Duration::from_secs(5),
        "the mismatch in the sbc-control log",
        || {
            let log = control.log_text();
            log.contains("future-node").then_some(log)
        },
    );
    assert!(log.contains("version mismatch"), "{log}");
    assert!(log.contains("sbc-media 9.0.0"), "{log}");
    assert!(log.contains("speaks version 2"), "{log}");

    let status = app.sbcctl(&["status"]);
    let shown = text(&status);
    assert!(status.status.success(), "{shown}");
    assert!(shown.contains("DISCONNECTED"), "{shown}");
    assert!(shown.contains("version mismatch"), "{shown}");
    assert!(shown.contains("future-node"), "{shown}");
    assert!(
        shown.contains("speaks version 2") && shown.contains("speaks version 1"),
        "{shown}"
    );

    // It keeps trying (the operator may be mid-upgrade), and the node stays down.
    wait_for(
        Duration::from_secs(10),
        "a retry after the mismatch",
        || {
            let page = scrape(app.control_metrics)?;
            (metric(
                &page,
                "sbc_media_node_connects_total{node=\"local\",result=\"version_mismatch\"}",
            )? >= 2.0)
                .then_some(())
        },
    );
    assert_eq!(
        metric(&app.control_page(), "sbc_media_node_up{node=\"local\"}"),
        Some(0.0)
    );
    assert!(
        control.is_running(),
        "a mismatching media node must not stop the control plane"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_reports_a_media_node_that_refuses_it() {
    let app = Appliance::new(&Settings {
        ports: 10,
        ..Settings::default()
    });
    let listener = UnixListener::bind(&app.media_socket).expect("bind the fake media socket");
    let reason = "RPC protocol version mismatch: peer `sbc-control 0.1.0` speaks version 1, \
                  this sbc-media (sbc-media 9.0.0) speaks version 2; upgrade the older side";
    let hellos = fake_media_node(
        listener,
        ServerFrame::HelloReject(HelloReject {
            protocol_version: 2,
            reason: reason.into(),
        }),
    );
    let (mut control, page) = start_control_until(&app, "rejected");
    assert_eq!(
        metric(&page, "sbc_media_node_up{node=\"local\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &page,
            "sbc_media_node_connects_total{node=\"local\",result=\"ok\"}"
        ),
        Some(0.0)
    );
    assert_hellos_were_ours(&hellos);

    let log = wait_for(
        Duration::from_secs(5),
        "the refusal in the sbc-control log",
        || {
            let log = control.log_text();
            log.contains("media node refused").then_some(log)
        },
    );
    assert!(log.contains("sbc-media 9.0.0) speaks version 2"), "{log}");

    let status = app.sbcctl(&["status"]);
    let shown = text(&status);
    assert!(status.status.success(), "{shown}");
    assert!(shown.contains("DISCONNECTED"), "{shown}");
    assert!(
        shown.contains(reason),
        "the node's own words appear in status: {shown}"
    );
    assert!(
        shown.contains("RPC protocol version 2"),
        "the node's version appears in status: {shown}"
    );
    assert!(control.is_running());
}
