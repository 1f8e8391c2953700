//! The appliance's configuration file: one YAML document for both processes.
//!
//! `sbc-control` reads the `control` section, `sbc-media` the `media` section; a host
//! that runs only a media node may leave `control` out. The doc comments on these types
//! are the operator manual (`docs/configuration.md` is checked against them).
//!
//! Loading is two steps, and both report mistakes the same way — file, line and column,
//! the key path (`control.media_nodes[1].quic.address`) and what was expected:
//! 1. serde deserialisation with unknown keys refused (`deny_unknown_fields`) and typed
//!    values (addresses, durations, port ranges, file modes) parsed on the spot;
//! 2. [`Config::validate`], for rules that span keys (unique names, exactly one
//!    transport per media node, ...). Its errors carry a key path; the line and column
//!    come from a YAML event index built over the same text ([`locate`]).

use std::collections::{BTreeMap, HashSet, btree_map};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The whole file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings of the control plane (`sbc-control`). Required where it runs.
    #[serde(default)]
    pub control: Option<ControlConfig>,
    /// Settings of a media node (`sbc-media`). Required where it runs.
    #[serde(default)]
    pub media: Option<MediaConfig>,
}

/// `control`: the signalling process.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// This control plane's identity toward media nodes (letters, digits, `.`, `_`, `-`;
    /// at most 64). Media sessions are tagged with it: a restarted control plane with
    /// the same `node_id` re-adopts them. Two control planes must never share one.
    pub node_id: String,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The HTTP listener for `/metrics` (Prometheus text format).
    #[serde(default = "default_control_metrics")]
    pub metrics: MetricsConfig,
    /// Unix socket where `sbcctl` talks to the running control plane.
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    /// Permission bits of `admin_socket`, as an octal string.
    #[serde(default = "default_socket_mode")]
    pub admin_socket_mode: FileMode,
    /// On SIGTERM: how long running work may take to finish before the process exits.
    #[serde(default = "default_drain")]
    pub drain_timeout: HumanDuration,
    /// The media nodes this control plane drives (at least one).
    pub media_nodes: Vec<MediaNodeConfig>,
    /// RPC timing toward media nodes.
    #[serde(default)]
    pub rpc: RpcClientConfig,
}

/// One media node, reached over exactly one of `unix` or `quic`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaNodeConfig {
    /// A name for logs and metrics labels; unique among `media_nodes`.
    pub name: String,
    /// Path of the media node's RPC socket (same host).
    #[serde(default)]
    pub unix: Option<PathBuf>,
    /// A media node on another host, reached over QUIC with mutual TLS.
    #[serde(default)]
    pub quic: Option<QuicClientConfig>,
}

/// QUIC client settings (mutual TLS: we present `cert`, the node must present a
/// certificate for `server_name` signed by `ca`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuicClientConfig {
    /// The media node's RPC address, e.g. `10.0.0.5:7400`.
    #[serde(deserialize_with = "de_socket_addr")]
    pub address: SocketAddr,
    /// The name in the media node's certificate.
    pub server_name: String,
    /// PEM file of the CA that signs media nodes' certificates.
    pub ca: PathBuf,
    /// PEM file of our client certificate (chain).
    pub cert: PathBuf,
    /// PEM file of our private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// RPC timing on the control side.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RpcClientConfig {
    /// A request without an answer for this long fails.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Reconnect attempts back off up to this interval.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_backoff: HumanDuration,
}

impl Default for RpcClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: default_request_timeout(),
            reconnect_max_backoff: default_reconnect_max(),
        }
    }
}

/// `media`: one media node (the data plane).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// This node's name, reported to control planes and in logs.
    pub node_name: String,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The HTTP listener for `/metrics`.
    #[serde(default = "default_media_metrics")]
    pub metrics: MetricsConfig,
    /// Where control planes connect.
    pub rpc: MediaRpcConfig,
    /// Sessions whose owner disconnected are kept (and keep relaying) this long; a
    /// control plane with the same `node_id` that reconnects in time adopts them,
    /// after that they are reaped.
    #[serde(default = "default_orphan_grace")]
    pub orphan_grace: HumanDuration,
    /// A session that receives no packet for this long is ended and its owner told.
    #[serde(default = "default_inactivity")]
    pub inactivity_timeout: HumanDuration,
    /// Refuse `create_session` beyond this many sessions.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
    /// Media interfaces: an address and a port range each (at least one).
    pub interfaces: Vec<MediaInterfaceConfig>,
    /// The packet engine: `io_uring` (default; falls back to `portable`, saying why, where
    /// the kernel refuses io_uring) or `portable` (epoll, any Linux).
    #[serde(default)]
    pub engine: EngineKind,
    /// CPUs to run packet workers on, one pinned worker thread per entry. Empty (the
    /// default): one worker on the highest-numbered CPU, leaving CPU 0 to the system and
    /// the control plane.
    #[serde(default)]
    pub cores: Vec<u16>,
    /// Whether sessions may ask to learn a peer's address from any source IP (`latch:
    /// any_ip`), for SIP peers behind NAT that signal unusable addresses. Off by default:
    /// then only the signalled IP may be learned.
    #[serde(default)]
    pub allow_latch_any_ip: bool,
}

/// Where the media node listens for RPC: a Unix socket, QUIC, or both.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaRpcConfig {
    /// Local control planes connect here.
    #[serde(default)]
    pub unix: Option<UnixListenConfig>,
    /// Remote control planes connect here, with mutual TLS.
    #[serde(default)]
    pub quic: Option<QuicServerConfig>,
    /// Largest RPC frame accepted, in bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame_len: u32,
    /// A peer that sends part of a frame and then nothing for this long is disconnected.
    #[serde(default = "default_stall")]
    pub stall_timeout: HumanDuration,
    /// At most this many RPC connections at once (control planes and observers).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

/// A Unix socket listener.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnixListenConfig {
    /// Socket path; its directory is created if missing.
    pub path: PathBuf,
    /// Permission bits, as an octal string (`"0660"`: owner and group may connect).
    #[serde(default = "default_socket_mode")]
    pub mode: FileMode,
}

/// QUIC server settings: clients must present a certificate signed by `ca`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuicServerConfig {
    /// UDP address to listen on, e.g. `0.0.0.0:7400`.
    #[serde(deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
    /// PEM file of the CA that signs control planes' client certificates.
    pub ca: PathBuf,
    /// PEM file of this node's certificate (chain).
    pub cert: PathBuf,
    /// PEM file of this node's private key.
    pub key: PathBuf,
}

/// One media interface.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaInterfaceConfig {
    /// Name used by the control plane when it asks for a leg; unique.
    pub name: String,
    /// Local address to bind media sockets to (IPv4 or IPv6).
    #[serde(deserialize_with = "de_ip_addr")]
    pub address: IpAddr,
    /// Address to put in SDP if it differs from `address` (1:1 NAT).
    #[serde(default, deserialize_with = "de_opt_ip_addr")]
    pub advertise: Option<IpAddr>,
    /// Port range, e.g. `"30000-39999"`: RTP on even ports, RTCP on the next odd one.
    pub ports: PortRange,
    /// DSCP value to mark outgoing media with (0–63; 46 = EF, for voice). Absent: the
    /// system default (0).
    #[serde(default)]
    pub dscp: Option<u8>,
}

/// Which packet engine a media node runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    #[default]
    IoUring,
    Portable,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::IoUring => "io_uring",
            EngineKind::Portable => "portable",
        }
    }
}

/// Logging settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `auto` (human on a terminal, JSON otherwise), `human` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or per-module directives
    /// (`info,sbc_media=debug`). The `RUST_LOG` environment variable overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: default_log_level(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Auto,
    Human,
    Json,
}

/// A metrics listener.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for the HTTP listener serving `/metrics`.
    #[serde(deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
}

fn default_control_metrics() -> MetricsConfig {
    MetricsConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
    }
}
fn default_media_metrics() -> MetricsConfig {
    MetricsConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
    }
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from("/run/sbc/control.sock")
}
fn default_socket_mode() -> FileMode {
    FileMode(0o660)
}
fn default_drain() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_reconnect_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_orphan_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_inactivity() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max_sessions() -> u32 {
    100_000
}
fn default_max_frame() -> u32 {
    4 * 1024 * 1024
}
fn default_stall() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_max_connections() -> u32 {
    64
}
fn default_log_level() -> String {
    "info".to_owned()
}

/// Deserialises a YAML scalar through `parse`, so that serde_yaml places a mistake at the
/// value itself (an error raised after `String::deserialize` returns is placed at the
/// enclosing mapping instead). `parse` returns what was expected, e.g. "a duration
/// such as `30s`, got `x`"; the message becomes "expected …".
struct ParseVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> serde::de::Visitor<'_> for ParseVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(|e| E::custom(format!("expected {e}")))
    }
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!(
            "an IP address and port such as `192.0.2.10:7400` or `[2001:db8::10]:7400` \
             (no host names; port 0 to 65535), got `{s}`"
        )
    })
}

fn parse_ip_addr(s: &str) -> Result<IpAddr, String> {
    s.trim().parse().map_err(|_| {
        format!(
            "an IPv4 or IPv6 address such as `192.0.2.10` or `2001:db8::10` (no host names, no port), got `{s}`"
        )
    })
}

fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_str(ParseVisitor {
        expecting: "an IP address and port such as `192.0.2.10:7400`",
        parse: parse_socket_addr,
    })
}

fn de_ip_addr<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    d.deserialize_str(ParseVisitor {
        expecting: "an IPv4 or IPv6 address such as `192.0.2.10`",
        parse: parse_ip_addr,
    })
}

fn de_opt_ip_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    struct Ip(IpAddr);
    impl<'de> Deserialize<'de> for Ip {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            de_ip_addr(d).map(Ip)
        }
    }
    Ok(Option::<Ip>::deserialize(d)?.map(|ip| ip.0))
}

/// A duration written with a unit: `500ms`, `30s`, `2m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parse `500ms`, `30s`, `2m` or `1h` (a whole number, then the unit; a space between
    /// them is allowed). The error says what was expected and what was found.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
            format!("a duration with a unit such as `30s`, `500ms` or `2m`, got `{s}`")
        })?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("a duration such as `30s`, `500ms` or `2m`, got `{s}`"))?;
        let d = match unit.trim() {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            unit => {
                return Err(format!(
                    "a duration unit of `ms`, `s`, `m` or `h`, got `{unit}` in `{s}`"
                ));
            }
        };
        Ok(Self(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(ParseVisitor {
            expecting: "a duration such as `30s`, `500ms` or `2m`",
            parse: Self::parse,
        })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A port range `"LOW-HIGH"`, inclusive, `LOW` even, at least one RTP/RTCP pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    /// Parse `"LOW-HIGH"`. The error says what was expected, what was found and, when
    /// both numbers parse, which rule they break.
    pub fn parse(s: &str) -> Result<Self, String> {
        let want = "a port range `LOW-HIGH` such as `30000-39999` (LOW even, 1024 ≤ LOW < HIGH)";
        let (lo, hi) = s
            .split_once('-')
            .ok_or_else(|| format!("{want}, got `{s}`"))?;
        let low: u16 = lo
            .trim()
            .parse()
            .map_err(|_| format!("{want}, got `{s}`"))?;
        let high: u16 = hi
            .trim()
            .parse()
            .map_err(|_| format!("{want}, got `{s}`"))?;
        let broken = if low < 1024 {
            Some("LOW is below 1024")
        } else if low >= high {
            Some("LOW is not below HIGH")
        } else if low % 2 != 0 {
            Some("LOW is odd, but RTP takes the even port of each pair")
        } else {
            None
        };
        match broken {
            Some(why) => Err(format!("{want}, got `{s}`: {why}")),
            None => Ok(Self { low, high }),
        }
    }

    /// Number of RTP/RTCP pairs (even port + next odd) in the range.
    pub fn pairs(&self) -> u32 {
        (u32::from(self.high) - u32::from(self.low)).div_ceil(2)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(ParseVisitor {
            expecting: "a port range such as `30000-39999`",
            parse: Self::parse,
        })
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Unix permission bits written as an octal string, e.g. `"0660"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FileMode {
    /// Parse octal permission bits: `"0660"`, `"660"` or `"0o660"`, at most `0777`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let digits = s.trim();
        let digits = digits.strip_prefix("0o").unwrap_or(digits);
        let octal = !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
        match u32::from_str_radix(digits, 8) {
            Ok(m) if octal && m <= 0o777 => Ok(Self(m)),
            _ => Err(format!(
                "permission bits as an octal string such as \"0660\" (quoted; at most 0777), got `{s}`"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(ParseVisitor {
            expecting: "permission bits as an octal string such as \"0660\"",
            parse: Self::parse,
        })
    }
}

impl Serialize for FileMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:04o}", self.0))
    }
}

/// One mistake in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` when the mistake has no place in the text (unreadable file).
    pub line: Option<usize>,
    /// 1-based.
    pub column: Option<usize>,
    /// Key path such as `control.media_nodes[1].quic.address` (`.` for the whole file).
    pub key: String,
    /// What was expected, and what was found.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": {}: {}", self.key, self.problem)
    }
}

/// All mistakes found in one file (at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Which process is loading: decides which section must be present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Control,
    Media,
    /// `check-config`: every section present must be valid; at least one present.
    Any,
}

impl Config {
    /// Read, parse and validate `path` for `role`.
    pub fn load(path: &Path, role: Role) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                line: None,
                column: None,
                key: ".".into(),
                problem: format!("cannot read the file: {e}"),
            }])
        })?;
        Self::parse(&text, path, role)
    }

    /// Parse and validate `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &Path, role: Role) -> Result<Config, ConfigErrors> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: Config = match serde_path_to_error::deserialize(de) {
            Ok(c) => c,
            Err(e) => {
                let index = PathIndex::build(text);
                let (key, place, problem) = describe_serde_error(e, &index);
                return Err(ConfigErrors(vec![ConfigError {
                    file: file.to_owned(),
                    line: place.map(|(l, _)| l),
                    column: place.map(|(_, c)| c),
                    key,
                    problem,
                }]));
            }
        };
        let problems = config.validate(role);
        if problems.is_empty() {
            return Ok(config);
        }
        let index = PathIndex::build(text);
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|(key, problem)| {
                let (line, column) = index.locate(&key).unwrap_or((1, 1));
                ConfigError {
                    file: file.to_owned(),
                    line: Some(line),
                    column: Some(column),
                    key,
                    problem,
                }
            })
            .collect();
        // In the order an operator reads the file (the sort is stable: same place, rule order).
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors))
    }

    /// Rules that span keys. Returns `(key path, problem)` pairs; empty when valid.
    pub fn validate(&self, role: Role) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match role {
            Role::Control if self.control.is_none() => out.push((
                ".".into(),
                "expected a `control` section: sbc-control needs it".into(),
            )),
            Role::Media if self.media.is_none() => out.push((
                ".".into(),
                "expected a `media` section: sbc-media needs it".into(),
            )),
            Role::Any if self.control.is_none() && self.media.is_none() => out.push((
                ".".into(),
                "expected a `control` section, a `media` section, or both".into(),
            )),
            _ => {}
        }
        if let Some(c) = &self.control {
            c.validate("control", &mut out);
        }
        if let Some(m) = &self.media {
            m.validate("media", &mut out);
        }
        out
    }
}

fn check_name(key: String, name: &str, out: &mut Vec<(String, String)>) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        out.push((
            key,
            format!("expected 1 to 64 letters, digits, `.`, `_` or `-`, got `{name}`"),
        ));
    }
}

fn check_log(key: &str, log: &LogConfig, out: &mut Vec<(String, String)>) {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in log.level.split(',') {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, l)| l)
            .trim();
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            out.push((
                format!("{key}.log.level"),
                format!(
                    "expected a level (error, warn, info, debug, trace) or `module=level` directives, got `{}`",
                    log.level
                ),
            ));
            return;
        }
    }
}

impl ControlConfig {
    fn validate(&self, key: &str, out: &mut Vec<(String, String)>) {
        check_name(format!("{key}.node_id"), &self.node_id, out);
        check_log(key, &self.log, out);
        if self.media_nodes.is_empty() {
            out.push((
                format!("{key}.media_nodes"),
                "expected at least one media node".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, node) in self.media_nodes.iter().enumerate() {
            let nkey = format!("{key}.media_nodes[{i}]");
            check_name(format!("{nkey}.name"), &node.name, out);
            if !names.insert(node.name.as_str()) {
                out.push((
                    format!("{nkey}.name"),
                    format!("expected a unique name, but `{}` is used twice", node.name),
                ));
            }
            match (&node.unix, &node.quic) {
                (Some(_), Some(_)) => out.push((
                    nkey.clone(),
                    "expected exactly one of `unix` or `quic`, got both".into(),
                )),
                (None, None) => out.push((
                    nkey.clone(),
                    "expected exactly one of `unix` (socket path) or `quic` (remote node), got neither".into(),
                )),
                _ => {}
            }
        }
        if self.rpc.request_timeout.0.is_zero() {
            out.push((
                format!("{key}.rpc.request_timeout"),
                "expected a duration above zero".into(),
            ));
        }
    }
}

impl MediaConfig {
    fn validate(&self, key: &str, out: &mut Vec<(String, String)>) {
        let mut seen_cores = HashSet::new();
        for (i, core) in self.cores.iter().enumerate() {
            if !seen_cores.insert(*core) {
                out.push((
                    format!("{key}.cores[{i}]"),
                    format!("expected each CPU once, but {core} is listed twice"),
                ));
            }
        }
        check_name(format!("{key}.node_name"), &self.node_name, out);
        check_log(key, &self.log, out);
        if self.rpc.unix.is_none() && self.rpc.quic.is_none() {
            out.push((
                format!("{key}.rpc"),
                "expected `unix`, `quic` or both: a media node nobody can reach is useless".into(),
            ));
        }
        if self.rpc.max_frame_len < 64 * 1024 {
            out.push((
                format!("{key}.rpc.max_frame_len"),
                format!(
                    "expected at least 65536 bytes, got {}",
                    self.rpc.max_frame_len
                ),
            ));
        }
        if self.interfaces.is_empty() {
            out.push((
                format!("{key}.interfaces"),
                "expected at least one media interface".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut ranges: BTreeMap<IpAddr, Vec<(usize, PortRange)>> = BTreeMap::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let ikey = format!("{key}.interfaces[{i}]");
            check_name(format!("{ikey}.name"), &iface.name, out);
            if let Some(dscp) = iface.dscp {
                if dscp > 63 {
                    out.push((
                        format!("{ikey}.dscp"),
                        format!("expected a DSCP value from 0 to 63 (46 = EF), got {dscp}"),
                    ));
                }
            }
            if !names.insert(iface.name.as_str()) {
                out.push((
                    format!("{ikey}.name"),
                    format!("expected a unique name, but `{}` is used twice", iface.name),
                ));
            }
            let same_addr = ranges.entry(iface.address).or_default();
            for (j, other) in same_addr.iter() {
                if iface.ports.low <= other.high && other.low <= iface.ports.high {
                    out.push((
                        format!("{ikey}.ports"),
                        format!(
                            "expected a port range that does not overlap interfaces[{j}] ({other}) on the same address, got {}",
                            iface.ports
                        ),
                    ));
                }
            }
            same_addr.push((i, iface.ports));
        }
        if self.orphan_grace.0.is_zero() {
            out.push((
                format!("{key}.orphan_grace"),
                "expected a duration above zero (sessions would be reaped the moment a control plane restarts)".into(),
            ));
        }
        if self.inactivity_timeout.0 < Duration::from_secs(1) {
            out.push((
                format!("{key}.inactivity_timeout"),
                "expected at least 1s".into(),
            ));
        }
    }

    /// Look up an interface by name.
    pub fn interface(&self, name: &str) -> Option<&MediaInterfaceConfig> {
        self.interfaces.iter().find(|i| i.name == name)
    }
}

/// Key path, place and problem of a deserialisation error.
///
/// serde_yaml places most mistakes well (a bad value at the value, an unknown key at the
/// key, a syntax error where the parser stopped), but a missing or repeated key at the
/// start of the enclosing mapping, under the mapping's path. Those two get the key's own
/// path, and the place of the mapping's key (missing) or of the second occurrence
/// (repeated).
fn describe_serde_error(
    e: serde_path_to_error::Error<serde_yaml::Error>,
    index: &PathIndex,
) -> (String, Option<(usize, usize)>, String) {
    let path = display_path(&e.path().to_string());
    let inner = e.into_inner();
    let place = inner.location().map(|l| (l.line(), l.column()));
    let message = tidy_serde_message(&inner.to_string(), &path, place);
    if let Some(field) = backquoted_after(&message, "missing field `") {
        let key = join_key(&path, field);
        let problem = format!("expected the key `{field}`, which is required, but it is missing");
        return (key, index.locate(&path).or(place), problem);
    }
    if let Some(field) = backquoted_after(&message, "duplicate field `") {
        let key = join_key(&path, field);
        let problem = format!("expected each key once, but `{field}` appears again");
        let at = index.repeats.get(&key).copied();
        return (key, at.or(place), problem);
    }
    let place = place.or_else(|| index.locate(&path));
    (path, place, message)
}

/// `x` in "…{prefix}x`…", when `message` starts with `prefix`.
fn backquoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(field, _)| field)
}

/// `path.key`, or `key` at the root.
fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() || path == "." {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// serde_path_to_error prints `` for the root, `a.b[0]` otherwise, and `?` for a
/// segment it could not name (a syntax error in the middle of a mapping): drop those.
fn display_path(p: &str) -> String {
    let mut p = p;
    while let Some(rest) = p.strip_suffix('?') {
        p = rest.strip_suffix('.').unwrap_or(rest);
    }
    if p.is_empty() {
        ".".into()
    } else {
        p.to_owned()
    }
}

/// serde_yaml prefixes messages with its own key path and appends " at line L column C";
/// we print both ourselves. serde's type names are spelled out for operators.
fn tidy_serde_message(msg: &str, path: &str, place: Option<(usize, usize)>) -> String {
    let mut msg = msg;
    if let Some((head, rest)) = msg.split_once(": ") {
        let is_prefix = path == head
            || path
                .strip_prefix(head)
                .is_some_and(|tail| tail.starts_with(['.', '[']));
        if is_prefix {
            msg = rest;
        }
    }
    // The last occurrence: a value quoted earlier in the message may contain anything.
    let mut msg = msg.to_owned();
    if let Some((l, c)) = place {
        let mark = format!(" at line {l} column {c}");
        if let Some(i) = msg.rfind(&mark) {
            msg.replace_range(i..i + mark.len(), "");
        }
    }
    // "…, expected struct MediaRpcConfig": the operator wrote a scalar or a list.
    if let Some((head, name)) = msg.rsplit_once("expected struct ") {
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            msg = format!("{head}expected a mapping of keys");
        }
    }
    for (serde_name, plain) in [
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected a string", "expected text"),
    ] {
        if msg.ends_with(serde_name) {
            msg.truncate(msg.len() - serde_name.len());
            msg.push_str(plain);
        }
    }
    msg
}

/// Find the 1-based line and column of the key path `path` in YAML `text`.
///
/// For `a.b[2].c` it returns the place of the key `c` inside the third item of `a.b`
/// (for an item, the place of its first key or of its `{`/`[`, or the item's value);
/// when the exact key is absent (a missing key), the place of its nearest ancestor, and
/// for `.` or a path with no ancestor in the text, the first key of the document.
/// `None` when the text holds no node at all (empty, or a syntax error at its start).
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    PathIndex::build(text).locate(path)
}

/// Key path → (line, column) of every key and sequence item in a YAML document.
///
/// Built from yaml-rust2 parser events. Their marks are exact for scalars and for flow
/// collections (`{`, `[`), but a block mapping's start is marked at the `:` after its
/// first key, so a block mapping takes the place of its first key instead.
struct PathIndex {
    /// Where each path is first written.
    places: BTreeMap<String, (usize, usize)>,
    /// Where a mapping key is written the second time (a duplicate key).
    repeats: BTreeMap<String, (usize, usize)>,
}

/// What a mapping waits for next.
enum MapState {
    Key,
    /// The value of this key (`None`: of a non-scalar key, whose value is not indexed).
    Value(Option<String>),
}

enum Frame {
    Map {
        path: String,
        state: MapState,
        /// A block mapping whose own place is still to be taken from its first key.
        pending: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

/// The path under which a complex (non-scalar) mapping key is parsed: nothing asks for it.
const IGNORED: &str = "\u{0}complex-key";

impl PathIndex {
    fn build(text: &str) -> PathIndex {
        use yaml_rust2::parser::{Event, Parser};

        let lines: Vec<&str> = text.split('\n').collect();
        let mut index = PathIndex {
            places: BTreeMap::new(),
            repeats: BTreeMap::new(),
        };
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Ok((event, mark)) = parser.next_token() {
            let pos = (mark.line(), mark.col() + 1);
            match event {
                Event::StreamEnd => break,
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let is_map = matches!(event, Event::MappingStart(..));
                    let path = match stack.last_mut() {
                        None => Some(String::new()),
                        Some(Frame::Map {
                            path,
                            state: state @ MapState::Key,
                            pending,
                        }) => {
                            // A complex key: its value is not indexed either.
                            if std::mem::take(pending) {
                                index.places.entry(slot(path)).or_insert(pos);
                            }
                            *state = MapState::Value(None);
                            None
                        }
                        Some(_) => child_path(&mut stack),
                    };
                    let path = path.unwrap_or_else(|| IGNORED.to_owned());
                    // `{` marks a flow mapping where it starts; a block mapping's mark
                    // is the `:` after its first key (see above).
                    let flow_map = lines
                        .get(pos.0.wrapping_sub(1))
                        .and_then(|l| l.chars().nth(mark.col()))
                        == Some('{');
                    if !is_map || flow_map {
                        index.places.entry(slot(&path)).or_insert(pos);
                    }
                    stack.push(if is_map {
                        Frame::Map {
                            path,
                            state: MapState::Key,
                            pending: !flow_map,
                        }
                    } else {
                        Frame::Seq { path, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map {
                        path,
                        state: state @ MapState::Key,
                        pending,
                    }) = stack.last_mut()
                    {
                        // This scalar is a key: remember where it is written.
                        if std::mem::take(pending) {
                            index.places.entry(slot(path)).or_insert(pos);
                        }
                        let p = join_key(path, &value);
                        match index.places.entry(p) {
                            btree_map::Entry::Vacant(v) => {
                                v.insert(pos);
                            }
                            btree_map::Entry::Occupied(o) => {
                                index.repeats.entry(o.key().clone()).or_insert(pos);
                            }
                        }
                        *state = MapState::Value(Some(value));
                        continue;
                    }
                    if let Some(p) = child_path(&mut stack) {
                        index.places.entry(p).or_insert(pos);
                    }
                }
                Event::Alias(_) => {
                    if let Some(Frame::Map {
                        state: state @ MapState::Key,
                        ..
                    }) = stack.last_mut()
                    {
                        *state = MapState::Value(None);
                    } else {
                        child_path(&mut stack);
                    }
                }
                _ => {}
            }
        }
        index
    }

    /// See [`locate`].
    fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut probe = path;
        loop {
            if let Some(pos) = self.places.get(probe) {
                return Some(*pos);
            }
            match probe.rfind(['.', '[']) {
                Some(cut) if cut > 0 => probe = &probe[..cut],
                _ => return self.places.get(".").copied(),
            }
        }
    }
}

/// Where the next value of the innermost container lives (and move past it).
fn child_path(stack: &mut [Frame]) -> Option<String> {
    match stack.last_mut()? {
        Frame::Map { path, state, .. } => match std::mem::replace(state, MapState::Key) {
            MapState::Value(key) => key.map(|k| join_key(path, &k)),
            MapState::Key => None,
        },
        Frame::Seq { path, next } => {
            let p = format!("{path}[{next}]");
            *next += 1;
            Some(p)
        }
    }
}

/// The index key of a container path (`.` for the root).
fn slot(path: &str) -> String {
    if path.is_empty() {
        ".".to_owned()
    } else {
        path.to_owned()
    }
}

/// Entry point for the `config` fuzz target: any bytes, never a panic.
///
/// Parses the bytes (when they are UTF-8) as a config file for [`Role::Any`], and looks
/// up a few key paths in them, as `check-config` would.
pub fn fuzz_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = Config::parse(text, Path::new("fuzz.yaml"), Role::Any) {
        // Formatting is part of the contract too.
        let _ = errors.to_string();
    }
    for path in [
        ".",
        "control",
        "control.media_nodes[0].quic.address",
        "media.interfaces[1].ports",
        "media.rpc.unix.path",
        "x[3].y",
    ] {
        let _ = locate(text, path);
    }
}

#[cfg(test)]
mod tests;
