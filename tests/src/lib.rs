//! Harness for the end-to-end tests: run the real `sbc-media`, `sbc-control` and
//! `sbcctl` binaries on loopback with a config written per test, scrape their metrics,
//! and end them by PID (never by name).
//!
//! The binaries must be built first (`cargo build --workspace --bins`; the test script
//! does it). They are found next to the test executable's `deps/` directory, i.e. in the
//! same Cargo target directory and profile.

#![allow(
    clippy::disallowed_methods,
    reason = "end-to-end tests wait for real processes in real time"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Directory holding the workspace binaries of the current profile.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("test executable lives in deps/");
    let dir = deps
        .parent()
        .expect("deps/ lives in the profile directory")
        .to_owned();
    for b in ["sbc-media", "sbc-control", "sbcctl"] {
        assert!(
            dir.join(b).exists(),
            "{} not built: run `cargo build --workspace --bins` before the e2e tests",
            dir.join(b).display()
        );
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// A UDP port on 127.0.0.1 that was free a moment ago (for QUIC listeners).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// A media port range no other test in this process uses (`size` ports, even start).
pub fn media_port_range(size: u16) -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 20) as u16 * 1000;
    let start = base + NEXT.fetch_add(size, Ordering::SeqCst);
    let start = start + start % 2;
    (start, start + size - 1)
}

/// A running child process, killed (by PID) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: &'static str,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Start `binary args…`, stdout and stderr appended to `log`.
    pub fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[&str],
        cwd: &Path,
        log: PathBuf,
    ) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("opening the log file");
        let err = out.try_clone().expect("cloning the log file handle");
        let child = Command::new(binary)
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Proc {
            name,
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| c.id() as i32)
            .expect("process running")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a PID we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for the process to exit by itself (after a signal).
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("process running");
        loop {
            if let Some(status) = child.try_wait().expect("waitpid") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}; log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Poll `f` every 20 ms until it returns `Some`, or panic with `what` after `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET `/metrics` from a listener; `None` if it does not answer.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
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

/// The value of one sample (`name{labels}` exactly as printed) in a metrics page.
pub fn metric(page: &str, sample: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Run a command to completion, bounded in time.
pub fn run(binary: &Path, args: &[&str], cwd: &Path) -> Output {
    let mut child = Command::new(binary)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("waitpid").is_some() {
            return child.wait_with_output().expect("collecting output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} {:?} did not finish within 120s", binary.display(), args);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// stdout + stderr as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A test's working directory with both processes' settings.
#[derive(Debug)]
pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub control_metrics: SocketAddr,
    pub media_metrics: SocketAddr,
    pub media_socket: PathBuf,
    /// The media interface `lo`'s port range (inclusive).
    pub ports: (u16, u16),
}

/// Options for [`Appliance::new`].
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_id: String,
    pub orphan_grace: &'static str,
    pub inactivity_timeout: &'static str,
    pub ports: u16,
    /// Extra YAML appended under `media.rpc` (e.g. a `quic:` block), indented 4 spaces.
    pub media_rpc_extra: String,
    /// Replaces the control plane's `media_nodes` list items (indented 4 spaces).
    pub media_nodes: Option<String>,
    /// Extra YAML lines under `media:` (indented 2 spaces), e.g. `  engine: portable\n`.
    pub media_extra: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node_id: "ctl-test".into(),
            orphan_grace: "30s",
            inactivity_timeout: "10m",
            ports: 1000,
            media_rpc_extra: String::new(),
            media_nodes: None,
            media_extra: String::new(),
        }
    }
}

impl Appliance {
    pub fn new(s: &Settings) -> Appliance {
        let dir = tempfile::tempdir().expect("tempdir");
        let control_metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("addr");
        let media_metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("addr");
        let (lo, hi) = media_port_range(s.ports);
        let media_socket = dir.path().join("media.sock");
        let nodes = s.media_nodes.clone().unwrap_or_else(|| {
            format!(
                "    - name: local\n      unix: {}\n",
                media_socket.display()
            )
        });
        let yaml = format!(
            "control:\n  node_id: {node}\n  log: {{ format: human, level: info }}\n  metrics: {{ listen: {cm} }}\n  admin_socket: {dir}/control.sock\n  drain_timeout: 3s\n  rpc: {{ request_timeout: 5s, reconnect_max_backoff: 500ms }}\n  media_nodes:\n{nodes}\nmedia:\n  node_name: media-test\n  log: {{ format: human, level: info }}\n  metrics: {{ listen: {mm} }}\n  rpc:\n    unix: {{ path: {sock}, mode: \"0660\" }}\n    stall_timeout: 1s\n{extra}{media_extra}  orphan_grace: {grace}\n  inactivity_timeout: {inact}\n  interfaces:\n    - name: lo\n      address: 127.0.0.1\n      ports: {lo}-{hi}\n",
            node = s.node_id,
            cm = control_metrics,
            mm = media_metrics,
            dir = dir.path().display(),
            sock = media_socket.display(),
            extra = s.media_rpc_extra,
            media_extra = s.media_extra,
            grace = s.orphan_grace,
            inact = s.inactivity_timeout,
        );
        let config = dir.path().join("sbc.yaml");
        std::fs::write(&config, yaml).expect("writing config");
        Appliance {
            dir,
            config,
            control_metrics,
            media_metrics,
            media_socket,
            ports: (lo, hi),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_str(&self) -> &str {
        self.config.to_str().expect("utf-8 temp path")
    }

    pub fn start_media(&self) -> Proc {
        let p = Proc::spawn(
            "sbc-media",
            &bin("sbc-media"),
            &["--config", self.config_str()],
            self.path(),
            self.path().join("media.log"),
        );
        wait_for(Duration::from_secs(20), "sbc-media metrics", || {
            scrape(self.media_metrics)
        });
        wait_for(Duration::from_secs(20), "sbc-media socket", || {
            self.media_socket.exists().then_some(())
        });
        p
    }

    /// Start the control plane and wait until it is connected to its media node(s).
    pub fn start_control(&self) -> Proc {
        let p = Proc::spawn(
            "sbc-control",
            &bin("sbc-control"),
            &["--config", self.config_str()],
            self.path(),
            self.path().join("control.log"),
        );
        wait_for(
            Duration::from_secs(20),
            "sbc-control connected to media",
            || {
                let page = scrape(self.control_metrics)?;
                (metric(&page, "sbc_media_node_up{node=\"local\"}")? == 1.0).then_some(())
            },
        );
        p
    }

    pub fn sbcctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--config", self.config_str()];
        all.extend_from_slice(args);
        run(&bin("sbcctl"), &all, self.path())
    }

    pub fn media_page(&self) -> String {
        scrape(self.media_metrics).expect("media metrics answer")
    }

    pub fn control_page(&self) -> String {
        scrape(self.control_metrics).expect("control metrics answer")
    }
}
