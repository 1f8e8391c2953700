//! The relay under test and how calls are set up on it.
//!
//! Every target gives, for each call, two destinations: where the load generator's A
//! side sends (direction 0; the relay forwards to the B side) and where the B side
//! sends (direction 1; forwarded to the A side). The A and B sides are one UDP socket
//! each, shared by every call; they are the signalled remote addresses of every call.
//!
//! - `sbc`: sessions of two legs created over the media node's Unix-socket RPC
//!   (`create_session`), leg 0's remote is A, leg 1's is B.
//! - `rtpengine`: `offer` with A's SDP, `answer` with B's SDP over the "ng" protocol.
//! - `raw`: the trivial `rawrelay`; no setup, every call uses its two ports.
//! - `direct`: no relay at all (A sends to B): the load generator's own floor.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use sbc_shared::ids::{OwnerTag, SessionId};
use sbc_shared::rpc::client::RpcClient;
use sbc_shared::rpc::msg::{
    Hello, LatchMode, LegSpec, PROTOCOL_VERSION, PeerRole, Request, Response, SessionSpec,
};

use crate::bencode::Value;
use crate::sys;

/// The load generator's two sides.
#[derive(Clone, Copy, Debug)]
pub struct Sides {
    pub a: SocketAddrV4,
    pub b: SocketAddrV4,
}

/// Where each call's packets go: `[direction 0 (A sends), direction 1 (B sends)]`.
pub type Destinations = [Vec<libc::sockaddr_in>; 2];

#[derive(Debug)]
pub enum Target {
    Sbc(SbcTarget),
    Rtpengine(NgTarget),
    Raw { a: SocketAddrV4, b: SocketAddrV4 },
    Direct { sides: Sides },
}

impl Target {
    /// The name in reports.
    pub fn system(&self) -> &'static str {
        match self {
            Target::Sbc(_) => "sbc-media",
            Target::Rtpengine(_) => "rtpengine",
            Target::Raw { .. } => "rawrelay",
            Target::Direct { .. } => "none (loadgen)",
        }
    }

    /// The packet engine that actually runs (for sbc-media: read from its metrics).
    pub fn engine(&self) -> String {
        match self {
            Target::Sbc(t) => t.engine(),
            Target::Rtpengine(_) => "userspace".into(),
            Target::Raw { .. } => "recvmmsg/sendmmsg".into(),
            Target::Direct { .. } => "-".into(),
        }
    }

    /// Make exactly `n` calls exist on the relay (creating or deleting the difference).
    pub fn set_calls(&mut self, n: usize) -> anyhow::Result<()> {
        match self {
            Target::Sbc(t) => t.set_calls(n),
            Target::Rtpengine(t) => t.set_calls(n),
            Target::Raw { .. } | Target::Direct { .. } => Ok(()),
        }
    }

    /// Destinations of the first `n` calls (which must exist).
    pub fn destinations(&self, n: usize) -> Destinations {
        let pair = |i: usize| -> (SocketAddrV4, SocketAddrV4) {
            match self {
                Target::Sbc(t) => (t.calls[i].1, t.calls[i].2),
                Target::Rtpengine(t) => (t.calls[i].dest[0], t.calls[i].dest[1]),
                Target::Raw { a, b } => (*a, *b),
                Target::Direct { sides } => (sides.b, sides.a),
            }
        };
        let mut d: Destinations = [Vec::with_capacity(n), Vec::with_capacity(n)];
        for i in 0..n {
            let (x, y) = pair(i);
            d[0].push(sys::sockaddr_in(x));
            d[1].push(sys::sockaddr_in(y));
        }
        d
    }

    /// Delete every call (end of the benchmark).
    pub fn close(&mut self) {
        if let Err(e) = self.set_calls(0) {
            eprintln!("loadgen: cleaning up calls: {e:#}");
        }
    }
}

/// sbc-media driven over its RPC.
pub struct SbcTarget {
    rt: tokio::runtime::Runtime,
    client: Arc<RpcClient>,
    interface: String,
    metrics: Option<SocketAddr>,
    sides: Sides,
    /// (session, leg 0 RTP address, leg 1 RTP address).
    calls: Vec<(SessionId, SocketAddrV4, SocketAddrV4)>,
}

impl std::fmt::Debug for SbcTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SbcTarget")
            .field("interface", &self.interface)
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

/// Sessions created or deleted concurrently over the one RPC connection.
const RPC_IN_FLIGHT: usize = 64;

impl SbcTarget {
    /// Connect (retrying for up to `wait` while the node starts) and say hello.
    pub fn connect(
        socket: &std::path::Path,
        interface: Option<String>,
        metrics: Option<SocketAddr>,
        sides: Sides,
        wait: Duration,
    ) -> anyhow::Result<SbcTarget> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = sys::now_ns() + wait.as_nanos() as u64;
        let stream = loop {
            match rt.block_on(tokio::net::UnixStream::connect(socket)) {
                Ok(s) => break s,
                Err(e) if sys::now_ns() > deadline => {
                    return Err(e).with_context(|| format!("connecting to {}", socket.display()));
                }
                Err(_) => sys::sleep(Duration::from_millis(50)),
            }
        };
        let (r, w) = stream.into_split();
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            software: format!("sbc-bench {}", env!("CARGO_PKG_VERSION")),
            role: PeerRole::Control,
            owner: OwnerTag("sbc-bench".into()),
        };
        let (client, _events) = rt
            .block_on(RpcClient::handshake(r, w, hello, Duration::from_secs(30)))
            .context("RPC hello")?;
        let interface = match interface {
            Some(i) => i,
            None => client
                .server()
                .interfaces
                .first()
                .cloned()
                .ok_or_else(|| anyhow!("the media node has no interface"))?,
        };
        Ok(SbcTarget {
            rt,
            client: Arc::new(client),
            interface,
            metrics,
            sides,
            calls: Vec::new(),
        })
    }

    fn engine(&self) -> String {
        let Some(addr) = self.metrics else {
            return "unknown (no --metrics)".into();
        };
        match scrape(addr) {
            Some(page) => page
                .lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| {
                    let rest = l.strip_prefix("sbc_media_engine_info{engine=\"")?;
                    let (engine, value) = rest.split_once("\"}")?;
                    (value.trim() == "1").then(|| engine.to_owned())
                })
                .unwrap_or_else(|| "unknown (no sbc_media_engine_info)".into()),
            None => format!("unknown ({addr} did not answer)"),
        }
    }

    fn set_calls(&mut self, n: usize) -> anyhow::Result<()> {
        if n > self.calls.len() {
            let missing = n - self.calls.len();
            let spec = SessionSpec {
                owner_data: String::new(),
                legs: [self.sides.a, self.sides.b]
                    .into_iter()
                    .map(|remote| LegSpec {
                        interface: self.interface.clone(),
                        remote_rtp: Some(SocketAddr::V4(remote)),
                        remote_rtcp: None,
                        latch: LatchMode::Off,
                        clock_rate: None,
                    })
                    .collect(),
                inactivity_timeout_ms: Some(3_600_000),
            };
            let client = self.client.clone();
            let created = self.rt.block_on(async move {
                let mut out = Vec::with_capacity(missing);
                let mut set = tokio::task::JoinSet::new();
                let mut launched = 0;
                let mut error = None;
                while launched < missing || !set.is_empty() {
                    while launched < missing && set.len() < RPC_IN_FLIGHT && error.is_none() {
                        let c = client.clone();
                        let s = spec.clone();
                        set.spawn(async move { c.call(Request::CreateSession(s)).await });
                        launched += 1;
                    }
                    let Some(joined) = set.join_next().await else {
                        break;
                    };
                    match joined {
                        Ok(Ok(Response::Session(info))) => out.push(info),
                        Ok(Ok(other)) => {
                            error.get_or_insert(anyhow!("create_session answered {other:?}"));
                        }
                        Ok(Err(e)) => {
                            error.get_or_insert(anyhow!("create_session: {e}"));
                        }
                        Err(e) => {
                            error.get_or_insert(anyhow!("create_session task: {e}"));
                        }
                    }
                    if error.is_some() && launched < missing {
                        launched = missing; // stop launching, drain what is in flight
                    }
                }
                (out, error)
            });
            let (infos, error) = created;
            for info in infos {
                let [l0, l1] = info.legs.as_slice() else {
                    bail!("session {:?} has {} legs, not 2", info.id, info.legs.len());
                };
                self.calls
                    .push((info.id, sys::v4(l0.local_rtp)?, sys::v4(l1.local_rtp)?));
            }
            if let Some(e) = error {
                return Err(e.context(format!("creating {n} sessions (got {})", self.calls.len())));
            }
        } else if n < self.calls.len() {
            let doomed: Vec<SessionId> = self.calls.drain(n..).map(|c| c.0).collect();
            let client = self.client.clone();
            let failures = self.rt.block_on(async move {
                let mut set = tokio::task::JoinSet::new();
                let mut failures = 0usize;
                for id in doomed {
                    while set.len() >= RPC_IN_FLIGHT {
                        if !matches!(set.join_next().await, Some(Ok(Ok(_)))) {
                            failures += 1;
                        }
                    }
                    let c = client.clone();
                    set.spawn(async move { c.call(Request::DeleteSession { session: id }).await });
                }
                while let Some(r) = set.join_next().await {
                    if !matches!(r, Ok(Ok(_))) {
                        failures += 1;
                    }
                }
                failures
            });
            if failures > 0 {
                bail!("{failures} delete_session calls failed");
            }
        }
        Ok(())
    }
}

/// GET `/metrics`; `None` if the listener does not answer.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, rest) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| rest.to_owned())
}

/// rtpengine driven over its "ng" control protocol (bencode over UDP).
#[derive(Debug)]
pub struct NgTarget {
    sock: UdpSocket,
    server: SocketAddr,
    sides: Sides,
    run: String,
    cookie: u64,
    serial: u64,
    calls: Vec<NgCall>,
}

#[derive(Debug)]
struct NgCall {
    call_id: String,
    from_tag: String,
    /// [where A sends, where B sends].
    dest: [SocketAddrV4; 2],
}

/// A plain audio offer/answer body: G.711 µ-law, RTP/AVP, 20 ms.
pub fn audio_sdp(addr: SocketAddrV4, session: u64) -> String {
    let ip = addr.ip();
    let port = addr.port();
    format!(
        "v=0\r\no=- {session} 1 IN IP4 {ip}\r\ns=sbc-bench\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// The audio address an SDP body gives (last `c=` line and the `m=audio` port).
pub fn sdp_audio_addr(sdp: &str) -> Option<SocketAddrV4> {
    let mut ip = None;
    let mut port = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(c) = line.strip_prefix("c=IN IP4 ") {
            ip = c.split('/').next().and_then(|s| s.trim().parse().ok());
        } else if let Some(m) = line.strip_prefix("m=audio ") {
            port = m.split_whitespace().next().and_then(|p| p.parse().ok());
        }
    }
    Some(SocketAddrV4::new(ip?, port?))
}

impl NgTarget {
    /// Bind a control socket and wait (up to `wait`) for rtpengine to answer a ping.
    pub fn connect(server: SocketAddr, sides: Sides, wait: Duration) -> anyhow::Result<NgTarget> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut t = NgTarget {
            sock,
            server,
            sides,
            run: format!("{:x}", sys::now_ns()),
            cookie: 0,
            serial: 0,
            calls: Vec::new(),
        };
        let deadline = sys::now_ns() + wait.as_nanos() as u64;
        loop {
            match t.request(Value::dict([("command", Value::str("ping"))]), 1) {
                Ok(_) => return Ok(t),
                Err(e) if sys::now_ns() > deadline => {
                    return Err(e.context(format!("rtpengine at {server} does not answer")));
                }
                Err(_) => sys::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Send one command, retransmitting up to `tries` times (rtpengine answers a
    /// repeated cookie from its cache), and return the answer dictionary.
    fn request(&mut self, msg: Value, tries: u32) -> anyhow::Result<Value> {
        self.cookie += 1;
        let cookie = format!("{}_{}", self.run, self.cookie);
        let mut wire = cookie.clone().into_bytes();
        wire.push(b' ');
        msg.encode(&mut wire);
        let mut buf = vec![0u8; 65536];
        for _ in 0..tries {
            self.sock.send_to(&wire, self.server)?;
            let deadline = sys::now_ns() + 2_000_000_000;
            while sys::now_ns() < deadline {
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                    continue;
                };
                let reply = &buf[..n];
                let Some(space) = reply.iter().position(|&c| c == b' ') else {
                    continue;
                };
                if reply[..space] != *cookie.as_bytes() {
                    continue; // a late answer to an earlier try
                }
                let (v, _) = Value::decode(&reply[space + 1..]).map_err(|e| anyhow!(e))?;
                let result = v.get("result").and_then(Value::as_text).unwrap_or_default();
                if result == "ok" || result == "pong" {
                    return Ok(v);
                }
                let why = v
                    .get("error-reason")
                    .and_then(Value::as_text)
                    .unwrap_or(result);
                bail!("rtpengine: {why}");
            }
        }
        bail!("rtpengine: no answer after {tries} tries")
    }

    fn set_calls(&mut self, n: usize) -> anyhow::Result<()> {
        while self.calls.len() < n {
            self.serial += 1;
            let call_id = format!("bench-{}-{}", self.run, self.serial);
            let from_tag = format!("a{}", self.serial);
            let to_tag = format!("b{}", self.serial);
            let offer = self.request(
                Value::dict([
                    ("command", Value::str("offer")),
                    ("call-id", Value::str(&call_id)),
                    ("from-tag", Value::str(&from_tag)),
                    ("sdp", Value::str(&audio_sdp(self.sides.a, self.serial))),
                ]),
                3,
            )?;
            let to_b = offer
                .get("sdp")
                .and_then(Value::as_text)
                .and_then(|s| sdp_audio_addr(&s))
                .ok_or_else(|| anyhow!("rtpengine's offer answer has no usable SDP"))?;
            let answer = self.request(
                Value::dict([
                    ("command", Value::str("answer")),
                    ("call-id", Value::str(&call_id)),
                    ("from-tag", Value::str(&from_tag)),
                    ("to-tag", Value::str(&to_tag)),
                    ("sdp", Value::str(&audio_sdp(self.sides.b, self.serial))),
                ]),
                3,
            )?;
            let to_a = answer
                .get("sdp")
                .and_then(Value::as_text)
                .and_then(|s| sdp_audio_addr(&s))
                .ok_or_else(|| anyhow!("rtpengine's answer answer has no usable SDP"))?;
            // The SDP rtpengine returns for the answer goes to A: A sends there, and
            // rtpengine relays to B; the offer's rewritten SDP goes to B, likewise.
            self.calls.push(NgCall {
                call_id,
                from_tag,
                dest: [to_a, to_b],
            });
        }
        while self.calls.len() > n {
            let Some(c) = self.calls.pop() else { break };
            self.request(
                Value::dict([
                    ("command", Value::str("delete")),
                    ("call-id", Value::str(&c.call_id)),
                    ("from-tag", Value::str(&c.from_tag)),
                ]),
                3,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_round_trip() {
        let a: SocketAddrV4 = "127.0.0.1:7000".parse().expect("addr");
        assert_eq!(sdp_audio_addr(&audio_sdp(a, 1)), Some(a));
    }
}
