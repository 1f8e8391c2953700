//! The control ↔ media RPC over QUIC with mutual TLS, between the real binaries:
//! create, list (status) and delete flow; a control-plane SIGKILL and restart over QUIC
//! (the new connection supersedes the dead one); a client whose certificate is signed by
//! another CA is refused and counted.

#![allow(
    clippy::disallowed_methods,
    reason = "end-to-end tests wait in real time"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use sbc_e2e::{Appliance, Settings, free_udp_port, metric, text, wait_for};
use sbc_shared::config::QuicClientConfig;
use sbc_shared::ids::OwnerTag;
use sbc_shared::rpc::client::RpcClient;
use sbc_shared::rpc::msg::{Hello, PROTOCOL_VERSION, PeerRole};

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

fn issue(
    dir: &Path,
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(vec![format!("{name}.test")]).expect("DNS name");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("signed");
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).expect("write cert");
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    (c, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_delete_over_quic_with_mutual_tls() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = new_ca("SBC test CA");
    let rogue = new_ca("Rogue CA");
    let ca_path = pki.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    let (media_cert, media_key) = issue(
        pki.path(),
        &ca,
        "media1",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (ctl_cert, ctl_key) = issue(
        pki.path(),
        &ca,
        "control1",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (rogue_cert, rogue_key) = issue(
        pki.path(),
        &rogue,
        "intruder",
        ExtendedKeyUsagePurpose::ClientAuth,
    );

    let quic_addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port())
        .parse()
        .expect("addr");
    let app = Appliance::new(&Settings {
        node_id: "ctl-quic".into(),
        ports: 200,
        media_rpc_extra: format!(
            "    quic: {{ listen: \"{quic_addr}\", ca: {}, cert: {}, key: {} }}\n",
            ca_path.display(),
            media_cert.display(),
            media_key.display()
        ),
        media_nodes: Some(format!(
            "    - name: local\n      quic: {{ address: \"{quic_addr}\", server_name: media1.test, ca: {}, cert: {}, key: {} }}\n",
            ca_path.display(),
            ctl_cert.display(),
            ctl_key.display()
        )),
        ..Settings::default()
    });
    let _media = app.start_media();
    let mut control = app.start_control();
    let page = app.media_page();
    assert_eq!(
        metric(
            &page,
            "sbc_rpc_connections{role=\"control\",transport=\"quic\"}"
        ),
        Some(1.0),
        "{page}"
    );

    // Create and list through the control plane, over QUIC.
    let out = app.sbcctl(&["sessions", "create", "20"]);
    assert!(text(&out).contains("created 20 sessions"), "{}", text(&out));
    let status = text(&app.sbcctl(&["status"]));
    assert!(
        status.contains("connected") && status.contains("sessions 20"),
        "{status}"
    );
    assert_eq!(
        metric(&app.media_page(), "sbc_media_sessions{state=\"owned\"}"),
        Some(20.0)
    );

    // SIGKILL: the QUIC connection is not closed cleanly. The restarted control plane's
    // new connection supersedes the dead one at once and re-adopts the sessions.
    control.kill9();
    let _control = app.start_control();
    let page = wait_for(Duration::from_secs(10), "re-adoption over QUIC", || {
        let page = app.control_page();
        (metric(&page, "sbc_control_sessions_adopted_total{node=\"local\"}")? == 20.0)
            .then_some(page)
    });
    assert_eq!(
        metric(&page, "sbc_control_media_sessions{node=\"local\"}"),
        Some(20.0)
    );

    // Delete over QUIC; every port is free again.
    let out = app.sbcctl(&["sessions", "delete"]);
    assert!(text(&out).contains("deleted 20 sessions"), "{}", text(&out));
    let page = app.media_page();
    assert_eq!(
        metric(&page, "sbc_media_ports_in_use{interface=\"lo\"}"),
        Some(0.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "sbc_rpc_requests_total{method=\"delete_session\",result=\"ok\"}"
        ),
        Some(20.0)
    );

    // A client with a certificate from another CA gets nowhere.
    let rogue_cfg = QuicClientConfig {
        address: quic_addr,
        server_name: "media1.test".into(),
        ca: ca_path.clone(),
        cert: rogue_cert,
        key: rogue_key,
    };
    let endpoint = sbc_shared::rpc::quic::client_endpoint(&rogue_cfg).expect("client endpoint");
    let refused = tokio::time::timeout(Duration::from_secs(15), async {
        let stream = sbc_shared::rpc::quic::connect(&endpoint, &rogue_cfg)
            .await
            .ok()?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            software: "intruder".into(),
            role: PeerRole::Control,
            owner: OwnerTag("ctl-quic".into()),
        };
        RpcClient::handshake(stream.recv, stream.send, hello, Duration::from_secs(5))
            .await
            .ok()
    })
    .await
    .expect("refusal is prompt");
    assert!(
        refused.is_none(),
        "a client outside our CA must not get an RPC session"
    );
    let page = wait_for(Duration::from_secs(5), "refusal counted", || {
        let page = app.media_page();
        (metric(
            &page,
            "sbc_rpc_connections_closed_total{reason=\"tls_refused\"}",
        )? >= 1.0)
            .then_some(page)
    });
    // The legitimate control plane is untouched.
    assert_eq!(
        metric(
            &page,
            "sbc_rpc_connections{role=\"control\",transport=\"quic\"}"
        ),
        Some(1.0),
        "{page}"
    );
}
