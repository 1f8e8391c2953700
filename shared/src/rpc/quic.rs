//! The QUIC transport for the control ↔ media RPC, for media nodes on other hosts.
//!
//! This module owns everything between a config ([`QuicServerConfig`] on the media
//! node, [`QuicClientConfig`] on the control plane) and one authenticated bidirectional
//! byte stream that [`FrameReader`](super::stream::FrameReader) and
//! [`FrameWriter`](super::stream::FrameWriter) carry frames over:
//!
//! * loading the PEM files (certificate chain, private key, CA), with errors that name
//!   the file and what is wrong with it, so a misconfigured node says so at startup;
//! * the TLS policy: rustls with the *ring* provider passed explicitly (no process-wide
//!   default provider is needed), TLS 1.3 only, ALPN [`ALPN`], and **mutual**
//!   authentication: the media node requires a client certificate signed by its `ca`, the
//!   control plane trusts only its `ca` for the node's certificate. Anyone who can reach
//!   the port could otherwise create sessions and allocate media ports. No 0-RTT: a
//!   replayed request must not create a session twice;
//! * the QUIC transport parameters: a [`IDLE_TIMEOUT`] idle timeout with a
//!   [`KEEP_ALIVE`] keep-alive, so a vanished peer (host down, network cut) is noticed in
//!   seconds even when the RPC itself is quiet; the client may open one bidirectional
//!   stream, the server none;
//! * the handshake and the wait for the RPC stream, each bounded.
//!
//! It does not own framing ([`stream`](super::stream)), the hello exchange
//! ([`msg`](super::msg)), connection limits or reconnect policy (the callers').
//!
//! One connection carries exactly one bidirectional stream, opened by the client. QUIC
//! only tells the peer about a new stream once data is sent on it, so after [`connect`]
//! the client must write its first frame (the RPC hello) promptly: that frame is what
//! makes [`accept`] on the server return, and a client that stays silent for
//! [`FIRST_STREAM_TIMEOUT`] is disconnected.
//!
//! Refused certificates: in TLS 1.3 the client considers the handshake complete before
//! the server has checked the client's certificate. So a client whose certificate the
//! server refuses (none, or signed by another CA) usually sees [`connect`] succeed and
//! the refusal only as a connection error on its first read (or a later write). That
//! `io::Error` just says "connection lost"; `connection.close_reason()` has the TLS
//! alert (e.g. "peer sent no certificates"), so log that. The server's [`accept`] fails
//! with [`QuicAcceptError::Handshake`]. A server certificate
//! the client refuses (wrong name, unknown CA) fails [`connect`] itself.
//!
//! Closing: dropping the last handle to a connection closes it at once and may discard
//! data not yet delivered. After a last frame (e.g. a hello reject), `finish()` the send
//! stream and wait (bounded) for `stopped()` or for the peer to close before dropping.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{
    NoInitialCipherSuite, QuicClientConfig as QuinnClientCrypto,
    QuicServerConfig as QuinnServerCrypto,
};
use quinn::{ConnectionError, IdleTimeout, TransportConfig, VarInt};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};

use crate::config::{QuicClientConfig, QuicServerConfig};

/// The ALPN protocol both ends require; a peer speaking anything else is refused in the
/// handshake.
pub const ALPN: &[u8] = b"sbc-rpc";

/// A connection with no packets from the peer for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Each end sends a keep-alive after this much silence, well inside [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Longest a handshake may take ([`IDLE_TIMEOUT`] alone would allow 15 s of silence).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`accept`] waits, after the handshake, for the client's RPC stream.
pub const FIRST_STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// Application close code: the client opened no RPC stream in time.
const CLOSE_NO_STREAM: VarInt = VarInt::from_u32(1);

/// Why a QUIC endpoint could not be set up. Each message names the file or address.
#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: invalid PEM: {source}", path.display())]
    InvalidPem { path: PathBuf, source: pem::Error },
    #[error("{}: no certificate found in PEM file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key found in PEM file", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("{}: CA certificate #{index} is not usable as a trust anchor: {source}", path.display())]
    BadCaCertificate {
        path: PathBuf,
        /// Position of the certificate in the file, from 1.
        index: usize,
        source: rustls::Error,
    },
    #[error("{}: cannot verify client certificates with this CA: {source}", path.display())]
    ClientVerifier {
        path: PathBuf,
        source: VerifierBuilderError,
    },
    #[error("{} / {}: certificate chain and private key refused: {source}", cert.display(), key.display())]
    CertificateAndKey {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration refused: {0}")]
    Tls(#[source] rustls::Error),
    #[error("TLS provider has no cipher suite usable for QUIC: {0}")]
    NoQuicCipherSuite(#[source] NoInitialCipherSuite),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Why an incoming connection did not become an RPC stream.
#[derive(Debug, thiserror::Error)]
pub enum QuicAcceptError {
    /// Includes refused client certificates (missing, or signed by another CA).
    #[error("QUIC handshake with {remote} failed: {source}")]
    Handshake {
        remote: SocketAddr,
        source: ConnectionError,
    },
    #[error("QUIC handshake with {remote} did not finish within {after:?}")]
    HandshakeTimeout { remote: SocketAddr, after: Duration },
    #[error("{remote} closed the connection before opening an RPC stream: {source}")]
    NoStream {
        remote: SocketAddr,
        source: ConnectionError,
    },
    #[error("{remote} opened no RPC stream within {after:?}")]
    StreamTimeout { remote: SocketAddr, after: Duration },
}

impl QuicAcceptError {
    /// Label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            QuicAcceptError::Handshake { .. } => "handshake_failed",
            QuicAcceptError::HandshakeTimeout { .. } => "handshake_timeout",
            QuicAcceptError::NoStream { .. } => "closed_before_stream",
            QuicAcceptError::StreamTimeout { .. } => "stream_timeout",
        }
    }
}

/// Why connecting to a media node failed.
#[derive(Debug, thiserror::Error)]
pub enum QuicConnectError {
    /// Refused before sending anything, e.g. `server_name` is not a valid DNS name or IP.
    #[error("cannot connect to {address} as `{server_name}`: {source}")]
    Connect {
        address: SocketAddr,
        server_name: String,
        source: quinn::ConnectError,
    },
    /// Includes a server certificate we refuse (wrong name, unknown CA).
    #[error("QUIC handshake with {address} (`{server_name}`) failed: {source}")]
    Handshake {
        address: SocketAddr,
        server_name: String,
        source: ConnectionError,
    },
    #[error("QUIC handshake with {address} did not finish within {after:?}")]
    HandshakeTimeout {
        address: SocketAddr,
        after: Duration,
    },
    #[error("cannot open the RPC stream to {address}: {source}")]
    OpenStream {
        address: SocketAddr,
        source: ConnectionError,
    },
}

/// One authenticated RPC stream over QUIC, from [`accept`] or [`connect`].
///
/// Keep `connection` (or either stream) alive for as long as the RPC runs; see the
/// module docs on closing.
#[derive(Debug)]
pub struct QuicRpcStream {
    pub connection: quinn::Connection,
    /// Implements `tokio::io::AsyncWrite`: wrap it in a `FrameWriter`.
    pub send: quinn::SendStream,
    /// Implements `tokio::io::AsyncRead`: wrap it in a `FrameReader`.
    pub recv: quinn::RecvStream,
    pub remote: SocketAddr,
    /// The subject common name of the peer's certificate, for logs (control chars
    /// replaced). `None` if the certificate has no CN.
    pub peer_name: Option<String>,
}

/// Bind the media node's QUIC endpoint. Must be called inside a tokio runtime.
///
/// Incoming connections come from `endpoint.accept()`; pass each to [`accept`] (or
/// `refuse()` it when over the connection limit).
pub fn server_endpoint(cfg: &QuicServerConfig) -> Result<quinn::Endpoint, QuicSetupError> {
    let provider = ring_provider();
    let roots = load_roots(&cfg.ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| QuicSetupError::ClientVerifier {
            path: cfg.ca.clone(),
            source,
        })?;
    let certs = load_certs(&cfg.cert)?;
    let key = load_key(&cfg.key)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(QuicSetupError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|source| QuicSetupError::CertificateAndKey {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            source,
        })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // `max_early_data_size` stays 0: no 0-RTT.
    let crypto = QuinnServerCrypto::try_from(tls).map_err(QuicSetupError::NoQuicCipherSuite)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(1)));
    quinn::Endpoint::server(server, cfg.listen).map_err(|source| QuicSetupError::Bind {
        addr: cfg.listen,
        source,
    })
}

/// Complete an incoming connection's handshake and wait for the client's RPC stream.
///
/// Both waits are bounded ([`HANDSHAKE_TIMEOUT`], [`FIRST_STREAM_TIMEOUT`]); run this
/// in its own task so a slow client does not hold up the accept loop.
pub async fn accept(incoming: quinn::Incoming) -> Result<QuicRpcStream, QuicAcceptError> {
    let remote = incoming.remote_address();
    let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(source)) => return Err(QuicAcceptError::Handshake { remote, source }),
        Err(_elapsed) => {
            // Dropping the handshake future dropped the connection, which closes it.
            return Err(QuicAcceptError::HandshakeTimeout {
                remote,
                after: HANDSHAKE_TIMEOUT,
            });
        }
    };
    let (send, recv) =
        match tokio::time::timeout(FIRST_STREAM_TIMEOUT, connection.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(source)) => return Err(QuicAcceptError::NoStream { remote, source }),
            Err(_elapsed) => {
                connection.close(CLOSE_NO_STREAM, b"no RPC stream opened in time");
                return Err(QuicAcceptError::StreamTimeout {
                    remote,
                    after: FIRST_STREAM_TIMEOUT,
                });
            }
        };
    let peer_name = peer_common_name(&connection);
    Ok(QuicRpcStream {
        remote: connection.remote_address(),
        connection,
        send,
        recv,
        peer_name,
    })
}

/// The control plane's QUIC endpoint for one media node: presents `cfg.cert`, trusts
/// only `cfg.ca`. Bound to the unspecified address of `cfg.address`'s family, port 0.
/// Must be called inside a tokio runtime.
pub fn client_endpoint(cfg: &QuicClientConfig) -> Result<quinn::Endpoint, QuicSetupError> {
    let provider = ring_provider();
    let roots = load_roots(&cfg.ca)?;
    let certs = load_certs(&cfg.cert)?;
    let key = load_key(&cfg.key)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(QuicSetupError::Tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|source| QuicSetupError::CertificateAndKey {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            source,
        })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // `enable_early_data` stays false: no 0-RTT.
    let crypto = QuinnClientCrypto::try_from(tls).map_err(QuicSetupError::NoQuicCipherSuite)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config(0)));
    let bind: SocketAddr = match cfg.address {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|source| QuicSetupError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Connect to `cfg.address`, checking the node's certificate against `cfg.server_name`,
/// and open the RPC stream. `endpoint` comes from [`client_endpoint`] for the same `cfg`.
///
/// The server only learns of the stream when data arrives on it: write the hello frame
/// right away. The whole call is bounded by [`HANDSHAKE_TIMEOUT`]. If the server refuses
/// our certificate, this usually still succeeds and the first read fails (module docs).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    cfg: &QuicClientConfig,
) -> Result<QuicRpcStream, QuicConnectError> {
    let address = cfg.address;
    let connecting = endpoint
        .connect(address, &cfg.server_name)
        .map_err(|source| QuicConnectError::Connect {
            address,
            server_name: cfg.server_name.clone(),
            source,
        })?;
    let handshake_and_open = async {
        let connection = connecting
            .await
            .map_err(|source| QuicConnectError::Handshake {
                address,
                server_name: cfg.server_name.clone(),
                source,
            })?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|source| QuicConnectError::OpenStream { address, source })?;
        Ok((connection, send, recv))
    };
    let (connection, send, recv) =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_and_open).await {
            Ok(result) => result?,
            Err(_elapsed) => {
                return Err(QuicConnectError::HandshakeTimeout {
                    address,
                    after: HANDSHAKE_TIMEOUT,
                });
            }
        };
    let peer_name = peer_common_name(&connection);
    Ok(QuicRpcStream {
        remote: connection.remote_address(),
        connection,
        send,
        recv,
        peer_name,
    })
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Both ends: dead-peer detection, and how many bidirectional streams the *peer* may
/// open (the server allows the client one, the client allows the server none).
fn transport_config(peer_bidi_streams: u32) -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            IdleTimeout::try_from(IDLE_TIMEOUT).expect("15 s fits a QUIC idle timeout"),
        ))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None);
    transport
}

fn read_pem(path: &Path) -> Result<Vec<u8>, QuicSetupError> {
    std::fs::read(path).map_err(|source| QuicSetupError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, QuicSetupError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| QuicSetupError::InvalidPem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(QuicSetupError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, QuicSetupError> {
    let pem = read_pem(path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(QuicSetupError::NoPrivateKey {
            path: path.to_owned(),
        }),
        Err(source) => Err(QuicSetupError::InvalidPem {
            path: path.to_owned(),
            source,
        }),
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, QuicSetupError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(path)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|source| QuicSetupError::BadCaCertificate {
                path: path.to_owned(),
                index: i + 1,
                source,
            })?;
    }
    Ok(roots)
}

/// The common name of the peer's end-entity certificate, if it has one.
fn peer_common_name(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let cn = subject_common_name(chain.first()?)?;
    Some(
        cn.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
    )
}

/// Find the subject CN in a DER certificate without a full X.509 parser: walk
/// `Certificate → tbsCertificate → subject` and return the first `2.5.4.3` attribute
/// that is a UTF-8 compatible string. Returns `None` on anything unexpected.
fn subject_common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const VERSION: u8 = 0xa0;
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    // UTF8String, PrintableString, IA5String.
    const TEXT_TAGS: &[u8] = &[0x0c, 0x13, 0x16];

    let (SEQUENCE, certificate, _) = der_tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der_tlv(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = der_tlv(rest)?.2;
    }
    // serialNumber, signature, issuer, validity
    for _ in 0..4 {
        rest = der_tlv(rest)?.2;
    }
    let (SEQUENCE, mut rdns, _) = der_tlv(rest)? else {
        return None;
    };
    while !rdns.is_empty() {
        let (SET, mut attributes, next) = der_tlv(rdns)? else {
            return None;
        };
        rdns = next;
        while !attributes.is_empty() {
            let (SEQUENCE, attribute, next) = der_tlv(attributes)? else {
                return None;
            };
            attributes = next;
            let (OID, oid, value) = der_tlv(attribute)? else {
                return None;
            };
            if oid == CN_OID {
                let (tag, text, _) = der_tlv(value)?;
                if !TEXT_TAGS.contains(&tag) {
                    return None;
                }
                return std::str::from_utf8(text).ok().map(str::to_owned);
            }
        }
    }
    None
}

/// Split one DER element (single-byte tag, definite length) off `input`:
/// `(tag, contents, rest)`.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tag: not in the parts we walk
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walker_survives_garbage() {
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(subject_common_name(&[0x30]), None);
        assert_eq!(
            subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(subject_common_name(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(subject_common_name(&[0x30, 0x02, 0x30, 0x00]), None);
        assert_eq!(subject_common_name(b"not a certificate at all"), None);
        for len in 0..64u8 {
            let mut bytes = vec![0x30, 0x80 | 1, len];
            bytes.extend(std::iter::repeat_n(0x30, usize::from(len)));
            assert_eq!(subject_common_name(&bytes), None);
        }
    }

    #[test]
    fn der_walker_finds_cn() {
        // Certificate { tbs { [0] v3, serial, alg, issuer, validity, subject { CN=ab } } }
        let subject = [
            0x30, 0x0d, 0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'a',
            b'b',
        ];
        let mut tbs = vec![
            0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x07, 0x30, 0x00, 0x30, 0x00, 0x30, 0x00,
        ];
        tbs.extend_from_slice(&subject);
        let mut tbs_seq = vec![0x30, u8::try_from(tbs.len()).unwrap()];
        tbs_seq.extend(tbs);
        let mut cert = vec![0x30, u8::try_from(tbs_seq.len()).unwrap()];
        cert.extend(tbs_seq);
        assert_eq!(subject_common_name(&cert).as_deref(), Some("ab"));
    }
}
