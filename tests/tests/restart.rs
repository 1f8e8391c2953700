//! Media survives the control plane: 100 sessions created through the RPC outlive a
//! SIGKILLed `sbc-control`, are re-adopted by the restarted one, and sessions nobody
//! claims are reaped after the grace period. Real binaries, real sockets.

#![allow(
    clippy::disallowed_methods,
    reason = "end-to-end tests wait in real time"
)]

use std::time::Duration;

use sbc_e2e::{Appliance, Settings, metric, text, wait_for};
use sbc_shared::ids::OwnerTag;
use sbc_shared::rpc::client::RpcClient;
use sbc_shared::rpc::msg::{
    Hello, LegSpec, PROTOCOL_VERSION, PeerRole, Request, Response, SessionSpec, SessionState,
};

async fn connect(app: &Appliance, owner: &str, role: PeerRole) -> RpcClient {
    let stream = tokio::net::UnixStream::connect(&app.media_socket)
        .await
        .expect("connect");
    let (r, w) = stream.into_split();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        software: "e2e-test".into(),
        role,
        owner: OwnerTag(owner.into()),
    };
    RpcClient::handshake(r, w, hello, Duration::from_secs(5))
        .await
        .expect("hello accepted")
        .0
}

async fn list_all(app: &Appliance) -> Vec<sbc_shared::rpc::msg::SessionInfo> {
    let observer = connect(app, "observer", PeerRole::Observer).await;
    let Response::Sessions { sessions, next } = observer
        .call(Request::ListSessions {
            owner: None,
            after: None,
            limit: 1000,
        })
        .await
        .expect("list")
    else {
        panic!("not a session list")
    };
    assert!(next.is_none());
    sessions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_sigkill_and_are_readopted_orphans_are_reaped() {
    let app = Appliance::new(&Settings {
        node_id: "ctl-a".into(),
        orphan_grace: "4s",
        ports: 1000,
        ..Settings::default()
    });
    let _media = app.start_media();
    let mut control = app.start_control();

    // 100 sessions created by the control plane over the RPC.
    let out = app.sbcctl(&["sessions", "create", "100"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("created 100 sessions"),
        "{}",
        text(&out)
    );

    // 5 sessions of a control plane that goes away for good.
    let stranger = connect(&app, "ctl-gone", PeerRole::Control).await;
    for _ in 0..5 {
        let spec = SessionSpec {
            owner_data: "{\"someone\":\"else\"}".into(),
            legs: vec![LegSpec {
                interface: "lo".into(),
                remote_rtp: None,
                remote_rtcp: None,
                latch: Default::default(),
                clock_rate: None,
            }],
            inactivity_timeout_ms: None,
        };
        stranger
            .call(Request::CreateSession(spec))
            .await
            .expect("create");
    }
    let before = list_all(&app).await;
    assert_eq!(before.len(), 105);
    let ports_before: Vec<_> = before
        .iter()
        .filter(|s| s.owner.0 == "ctl-a")
        .map(|s| s.legs[0].local_rtp)
        .collect();
    drop(stranger);

    // SIGKILL the control plane: no goodbye, no cleanup.
    control.kill9();
    let after_kill = wait_for(Duration::from_secs(5), "ctl-a sessions orphaned", || {
        let page = app.media_page();
        (metric(&page, "sbc_media_sessions{state=\"orphaned\"}")? == 105.0).then_some(page)
    });
    assert_eq!(
        metric(&after_kill, "sbc_media_sessions{state=\"owned\"}"),
        Some(0.0)
    );
    let during = list_all(&app).await;
    assert_eq!(
        during.len(),
        105,
        "every session still exists while control is down"
    );
    assert!(during.iter().all(|s| s.state == SessionState::Orphaned));
    // Ports are still held: binding one of them fails.
    assert!(
        std::net::UdpSocket::bind(ports_before[0]).is_err(),
        "a session's port must stay bound"
    );

    // Restart: the new control plane re-adopts its 100, not the stranger's 5.
    let _control = app.start_control();
    let page = wait_for(Duration::from_secs(10), "100 sessions re-adopted", || {
        let page = app.control_page();
        (metric(&page, "sbc_control_sessions_adopted_total{node=\"local\"}")? == 100.0)
            .then_some(page)
    });
    assert_eq!(
        metric(&page, "sbc_control_media_sessions{node=\"local\"}"),
        Some(100.0)
    );
    let status = app.sbcctl(&["status"]);
    assert!(text(&status).contains("connected"), "{}", text(&status));
    assert!(
        text(&status).contains("sessions:       100"),
        "{}",
        text(&status)
    );

    // After the grace period the unclaimed 5 are reaped; the adopted 100 stay.
    let media = wait_for(Duration::from_secs(15), "unclaimed sessions reaped", || {
        let page = app.media_page();
        (metric(
            &page,
            "sbc_media_sessions_reaped_total{reason=\"unclaimed\"}",
        )? == 5.0)
            .then_some(page)
    });
    assert_eq!(
        metric(&media, "sbc_media_sessions{state=\"owned\"}"),
        Some(100.0)
    );
    assert_eq!(
        metric(&media, "sbc_media_sessions{state=\"orphaned\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&media, "sbc_media_sessions_adopted_total"),
        Some(100.0)
    );
    let remaining = list_all(&app).await;
    assert_eq!(remaining.len(), 100);
    assert!(
        remaining
            .iter()
            .all(|s| s.owner.0 == "ctl-a" && s.state == SessionState::Owned)
    );
    let after: Vec<_> = remaining.iter().map(|s| s.legs[0].local_rtp).collect();
    for p in &ports_before {
        assert!(after.contains(p), "adopted sessions keep their ports");
    }

    // And the adopted sessions are fully ours again: delete them all, ports return.
    let out = app.sbcctl(&["sessions", "delete"]);
    assert!(
        text(&out).contains("deleted 100 sessions"),
        "{}",
        text(&out)
    );
    let media = app.media_page();
    assert_eq!(
        metric(&media, "sbc_media_ports_in_use{interface=\"lo\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&media, "sbc_media_ports_free{interface=\"lo\"}"),
        Some(1000.0)
    );
}
