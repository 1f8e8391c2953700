//! The QUIC transport end to end on 127.0.0.1: mutual TLS, one RPC stream, refusals,
//! and setup errors. Certificates are generated with rcgen into a temp dir.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use sbc_shared::config::{QuicClientConfig, QuicServerConfig};
use sbc_shared::ids::OwnerTag;
use sbc_shared::rpc::PROTOCOL_VERSION;
use sbc_shared::rpc::codec::{DEFAULT_MAX_FRAME_LEN, decode};
use sbc_shared::rpc::msg::{ClientFrame, Hello, HelloAck, PeerRole, ServerFrame};
use sbc_shared::rpc::quic::{
    self, ALPN, QuicAcceptError, QuicConnectError, QuicRpcStream, QuicSetupError,
};
use sbc_shared::rpc::stream::{FrameReader, FrameWriter, ReadError};
use tempfile::TempDir;

const TEST_LIMIT: Duration = Duration::from_secs(30);
const STALL: Duration = Duration::from_secs(5);

/// Run a test body with a hard deadline so a broken handshake can never hang the suite.
async fn bounded<F: Future>(body: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .expect("test exceeded its time limit")
}

struct Pki {
    dir: TempDir,
    ca: PathBuf,
    media_cert: PathBuf,
    media_key: PathBuf,
    control_cert: PathBuf,
    control_key: PathBuf,
    /// A client certificate from an unrelated CA.
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs to validate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key generation"))
        .expect("self-signed CA")
}

/// Issue a leaf certificate; returns (cert PEM, key PEM).
fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    dns: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::new(vec![dns.to_owned()]).expect("valid DNS name");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("key generation");
    let cert = params.signed_by(&key, ca).expect("CA signs the leaf");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("temp dir is writable");
    path
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let ca = new_ca("SBC test CA");
    let rogue_ca = new_ca("Rogue CA");
    let (media_cert, media_key) = issue(
        &ca,
        "media1",
        "media1.test",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (control_cert, control_key) = issue(
        &ca,
        "control1",
        "control1.test",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (rogue_cert, rogue_key) = issue(
        &rogue_ca,
        "control1",
        "control1.test",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        ca: write(d, "ca.pem", &ca.pem()),
        media_cert: write(d, "media.pem", &media_cert),
        media_key: write(d, "media.key", &media_key),
        control_cert: write(d, "control.pem", &control_cert),
        control_key: write(d, "control.key", &control_key),
        rogue_cert: write(d, "rogue.pem", &rogue_cert),
        rogue_key: write(d, "rogue.key", &rogue_key),
        dir,
    }
}

fn server_cfg(pki: &Pki) -> QuicServerConfig {
    QuicServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ca: pki.ca.clone(),
        cert: pki.media_cert.clone(),
        key: pki.media_key.clone(),
    }
}

fn client_cfg(pki: &Pki, address: SocketAddr) -> QuicClientConfig {
    QuicClientConfig {
        address,
        server_name: "media1.test".to_owned(),
        ca: pki.ca.clone(),
        cert: pki.control_cert.clone(),
        key: pki.control_key.clone(),
    }
}

fn hello() -> ClientFrame {
    ClientFrame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        software: "sbc-control test".to_owned(),
        role: PeerRole::Control,
        owner: OwnerTag::from("control1"),
    })
}

/// Start a media-side endpoint that accepts exactly one connection and reports how
/// `quic::accept` went.
fn serve_one(
    pki: &Pki,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<QuicRpcStream, QuicAcceptError>>,
) {
    let endpoint = quic::server_endpoint(&server_cfg(pki)).expect("server endpoint");
    let addr = endpoint.local_addr().expect("bound address");
    let task = tokio::spawn(async move {
        let incoming = endpoint.accept().await.expect("endpoint is open");
        let result = quic::accept(incoming).await;
        // Keep the endpoint alive until accept is done (it drives the connection).
        drop(endpoint);
        result
    });
    (addr, task)
}

/// The client side of a refused connection: connecting may succeed (TLS 1.3 lets the
/// client finish first), but then the hello must not get an answer.
async fn expect_refused_after_connect(result: Result<QuicRpcStream, QuicConnectError>) -> String {
    let rpc = match result {
        Err(e) => return format!("connect: {e}"),
        Ok(rpc) => rpc,
    };
    let mut writer = FrameWriter::new(rpc.send);
    let mut reader = FrameReader::new(rpc.recv, DEFAULT_MAX_FRAME_LEN, STALL);
    if let Err(e) = writer.write_msg(&hello()).await {
        return format!("write: {e}");
    }
    match reader.read_frame().await {
        // The io::Error only says "connection lost"; the connection knows why.
        Err(ReadError::Io(e)) => {
            let why = rpc
                .connection
                .close_reason()
                .expect("the connection is closed");
            format!("read: {e} ({why})")
        }
        other => panic!("expected the connection to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn hello_round_trips_over_mutual_tls() {
    bounded(async {
        let pki = pki();
        let endpoint = quic::server_endpoint(&server_cfg(&pki)).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let incoming = endpoint.accept().await.expect("endpoint is open");
            let rpc = quic::accept(incoming).await.expect("accept");
            let mut reader = FrameReader::new(rpc.recv, DEFAULT_MAX_FRAME_LEN, STALL);
            let mut writer = FrameWriter::new(rpc.send);
            let frame = reader.read_frame().await.unwrap().expect("a hello frame");
            let got: ClientFrame = decode(&frame).unwrap();
            writer
                .write_msg(&ServerFrame::HelloAck(HelloAck {
                    protocol_version: PROTOCOL_VERSION,
                    software: "sbc-media test".to_owned(),
                    node_name: "media1".to_owned(),
                    orphan_grace_ms: 30_000,
                    interfaces: vec!["public".to_owned()],
                }))
                .await
                .unwrap();
            // The client closes once it has the ack; dropping earlier could lose it.
            let closed = rpc.connection.closed().await;
            endpoint.wait_idle().await;
            (got, rpc.peer_name, rpc.remote, closed)
        });

        let cfg = client_cfg(&pki, addr);
        let client = quic::client_endpoint(&cfg).unwrap();
        let rpc = quic::connect(&client, &cfg).await.expect("connect");
        assert_eq!(rpc.remote, addr);
        assert_eq!(rpc.peer_name.as_deref(), Some("media1"));
        let alpn = rpc
            .connection
            .handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol;
        assert_eq!(alpn.as_deref(), Some(ALPN));
        let mut writer = FrameWriter::new(rpc.send);
        let mut reader = FrameReader::new(rpc.recv, DEFAULT_MAX_FRAME_LEN, STALL);
        writer.write_msg(&hello()).await.unwrap();
        let frame = reader.read_frame().await.unwrap().expect("a reply");
        match decode::<ServerFrame>(&frame).unwrap() {
            ServerFrame::HelloAck(ack) => assert_eq!(ack.node_name, "media1"),
            other => panic!("expected hello_ack, got {other:?}"),
        }
        rpc.connection.close(0u32.into(), b"done");
        client.wait_idle().await;

        let (got, peer_name, remote, closed) = server.await.unwrap();
        assert_eq!(got, hello());
        assert_eq!(peer_name.as_deref(), Some("control1"));
        assert_eq!(remote.ip(), addr.ip());
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
            "{closed:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    bounded(async {
        let pki = pki();
        let (addr, server) = serve_one(&pki);

        // A client that trusts the server but presents no certificate.
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_file_iter(&pki.ca)
                .unwrap()
        {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connect = async {
            let connection = client
                .connect_with(
                    quinn::ClientConfig::new(Arc::new(crypto)),
                    addr,
                    "media1.test",
                )
                .unwrap()
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let (send, recv) = connection
                .open_bi()
                .await
                .map_err(|e| format!("open: {e}"))?;
            Ok::<_, String>((connection, send, recv))
        };
        let client_saw = match connect.await {
            Err(e) => e,
            Ok((connection, send, recv)) => {
                let rpc = QuicRpcStream {
                    remote: connection.remote_address(),
                    connection,
                    send,
                    recv,
                    peer_name: None,
                };
                expect_refused_after_connect(Ok(rpc)).await
            }
        };
        let server_saw = server.await.unwrap().expect_err("server must refuse");
        eprintln!("no client cert: client saw `{client_saw}`; server saw `{server_saw}`");
        assert!(
            matches!(server_saw, QuicAcceptError::Handshake { .. }),
            "{server_saw:?}"
        );
        assert_eq!(server_saw.reason(), "handshake_failed");
    })
    .await;
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    bounded(async {
        let pki = pki();
        let (addr, server) = serve_one(&pki);
        let mut cfg = client_cfg(&pki, addr);
        cfg.cert = pki.rogue_cert.clone();
        cfg.key = pki.rogue_key.clone();
        let client = quic::client_endpoint(&cfg).unwrap();
        let client_saw = expect_refused_after_connect(quic::connect(&client, &cfg).await).await;
        let server_saw = server.await.unwrap().expect_err("server must refuse");
        eprintln!("rogue CA: client saw `{client_saw}`; server saw `{server_saw}`");
        assert!(
            matches!(server_saw, QuicAcceptError::Handshake { .. }),
            "{server_saw:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn wrong_server_name_fails_connect() {
    bounded(async {
        let pki = pki();
        let (addr, server) = serve_one(&pki);
        let mut cfg = client_cfg(&pki, addr);
        cfg.server_name = "media2.test".to_owned();
        let client = quic::client_endpoint(&cfg).unwrap();
        let err = quic::connect(&client, &cfg)
            .await
            .expect_err("the server's certificate is not for media2.test");
        eprintln!("wrong name: client saw `{err}`");
        assert!(matches!(err, QuicConnectError::Handshake { .. }), "{err:?}");
        assert!(err.to_string().contains("certificate"), "{err}");
        let server_saw = server.await.unwrap().expect_err("handshake was aborted");
        eprintln!("wrong name: server saw `{server_saw}`");
        assert!(
            matches!(server_saw, QuicAcceptError::Handshake { .. }),
            "{server_saw:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn server_with_untrusted_certificate_fails_connect() {
    bounded(async {
        let pki = pki();
        let (addr, server) = serve_one(&pki);
        let mut cfg = client_cfg(&pki, addr);
        // Trust only an unrelated CA: the media node's certificate is not signed by it.
        let other_ca = new_ca("Another CA");
        cfg.ca = write(pki.dir.path(), "other-ca.pem", &other_ca.pem());
        let client = quic::client_endpoint(&cfg).unwrap();
        let err = quic::connect(&client, &cfg).await.expect_err("unknown CA");
        eprintln!("untrusted server: client saw `{err}`");
        assert!(matches!(err, QuicConnectError::Handshake { .. }), "{err:?}");
        assert!(server.await.unwrap().is_err());
    })
    .await;
}

fn setup_error(cfg: &QuicServerConfig) -> QuicSetupError {
    quic::server_endpoint(cfg).expect_err("setup must fail")
}

#[tokio::test]
async fn setup_errors_name_the_file() {
    bounded(async {
        let pki = pki();
        let d = pki.dir.path();

        // Missing key file.
        let mut cfg = server_cfg(&pki);
        cfg.key = d.join("missing.key");
        let err = setup_error(&cfg);
        assert!(matches!(err, QuicSetupError::Read { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read", cfg.key.display())),
            "{err}"
        );

        // Garbage (no PEM sections at all) as the certificate.
        let garbage = write(d, "garbage.pem", "this is not a certificate\n");
        let mut cfg = server_cfg(&pki);
        cfg.cert = garbage.clone();
        let err = setup_error(&cfg);
        assert_eq!(
            err.to_string(),
            format!("{}: no certificate found in PEM file", garbage.display())
        );

        // Garbage as the key, and a certificate where the key should be.
        let mut cfg = server_cfg(&pki);
        cfg.key = garbage.clone();
        assert_eq!(
            setup_error(&cfg).to_string(),
            format!("{}: no private key found in PEM file", garbage.display())
        );
        cfg.key = pki.media_cert.clone();
        assert_eq!(
            setup_error(&cfg).to_string(),
            format!(
                "{}: no private key found in PEM file",
                pki.media_cert.display()
            )
        );

        // Broken base64 inside a PEM section.
        let broken = write(
            d,
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        );
        let mut cfg = server_cfg(&pki);
        cfg.ca = broken.clone();
        let err = setup_error(&cfg);
        assert!(matches!(err, QuicSetupError::InvalidPem { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: invalid PEM", broken.display())),
            "{err}"
        );

        // Well-formed PEM holding bytes that are not a certificate, as the CA.
        let not_der = write(
            d,
            "not-der.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let mut cfg = server_cfg(&pki);
        cfg.ca = not_der.clone();
        let err = setup_error(&cfg);
        assert!(
            matches!(err, QuicSetupError::BadCaCertificate { index: 1, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&not_der.display().to_string()),
            "{err}"
        );

        // A key that does not belong to the certificate.
        let mut cfg = server_cfg(&pki);
        cfg.key = pki.control_key.clone();
        let err = setup_error(&cfg);
        assert!(
            matches!(err, QuicSetupError::CertificateAndKey { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&pki.media_cert.display().to_string()), "{msg}");
        assert!(
            msg.contains(&pki.control_key.display().to_string()),
            "{msg}"
        );

        // The client side reads its files the same way.
        let mut ccfg = client_cfg(&pki, "127.0.0.1:9".parse().unwrap());
        ccfg.ca = garbage.clone();
        let err = quic::client_endpoint(&ccfg).expect_err("no CA");
        assert_eq!(
            err.to_string(),
            format!("{}: no certificate found in PEM file", garbage.display())
        );
        let mut ccfg = client_cfg(&pki, "127.0.0.1:9".parse().unwrap());
        ccfg.key = d.join("missing.key");
        let err = quic::client_endpoint(&ccfg).expect_err("no key");
        assert!(matches!(err, QuicSetupError::Read { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn bind_failure_names_the_address() {
    bounded(async {
        let pki = pki();
        let first = quic::server_endpoint(&server_cfg(&pki)).unwrap();
        let mut cfg = server_cfg(&pki);
        cfg.listen = first.local_addr().unwrap();
        let err = setup_error(&cfg);
        assert!(matches!(err, QuicSetupError::Bind { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot bind UDP {}", cfg.listen)),
            "{err}"
        );
    })
    .await;
}

#[test]
fn server_endpoint_outside_a_runtime_is_an_error() {
    let pki = pki();
    let err = quic::server_endpoint(&server_cfg(&pki)).expect_err("no runtime");
    assert!(matches!(err, QuicSetupError::Bind { .. }), "{err:?}");
}
