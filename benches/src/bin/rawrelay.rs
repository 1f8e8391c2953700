//! `rawrelay`: the least a UDP relay can do, to show the machine's ceiling. What arrives
//! on `--listen-a` goes out of the `--listen-b` socket to `--peer-b`, and back; batches
//! of up to 64 datagrams per `recvmmsg`/`sendmmsg`, no parsing, no per-call state, one
//! thread. It stops by itself after `--max-seconds` (default 1800) or on SIGTERM.
//!
//! usage: rawrelay --listen-a ADDR --peer-a ADDR --listen-b ADDR --peer-b ADDR [--cpu N]
//!                 [--max-seconds S]

#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use sbc_bench::mmsg::{BATCH, Batch, wait_readable};
use sbc_bench::sys;

fn arg(args: &[String], key: &str) -> Option<String> {
    args.iter()
        .position(|a| a == key)
        .and_then(|i| args.get(i + 1).cloned())
}

fn addr(args: &[String], key: &str) -> anyhow::Result<SocketAddr> {
    arg(args, key)
        .ok_or_else(|| anyhow!("{key} ADDR is required"))?
        .parse()
        .with_context(|| key.to_owned())
}

fn main() -> ExitCode {
    match relay() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rawrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn relay() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = [addr(&args, "--listen-a")?, addr(&args, "--listen-b")?];
    let peers = [addr(&args, "--peer-a")?, addr(&args, "--peer-b")?];
    if let Some(cpu) = arg(&args, "--cpu") {
        let cpu: usize = cpu.parse().context("--cpu")?;
        sys::pin_to_cpu(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    let max_seconds: u64 = arg(&args, "--max-seconds")
        .map(|s| s.parse())
        .transpose()
        .context("--max-seconds")?
        .unwrap_or(1800);
    let socks = [
        sys::udp_socket(listen[0], 8 << 20).with_context(|| format!("binding {}", listen[0]))?,
        sys::udp_socket(listen[1], 8 << 20).with_context(|| format!("binding {}", listen[1]))?,
    ];
    let fds = [socks[0].as_raw_fd(), socks[1].as_raw_fd()];
    let peers = [
        sys::sockaddr_in(sys::v4(peers[0])?),
        sys::sockaddr_in(sys::v4(peers[1])?),
    ];
    eprintln!(
        "rawrelay: {} ⇄ {}, up to {max_seconds} s",
        listen[0], listen[1]
    );
    let deadline = sys::now_ns() + max_seconds * 1_000_000_000;
    let mut batch = Batch::new(2048);
    let (mut relayed, mut failed) = (0u64, 0u64);
    loop {
        let mut moved = 0usize;
        // In on A's port → out of B's port to B; in on B's port → out of A's to A.
        for (rx, tx) in [(0usize, 1usize), (1, 0)] {
            for _ in 0..8 {
                let n = batch.recv(fds[rx]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                batch.redirect_all(&peers[tx]);
                let (s, f) = batch.send(fds[tx]);
                relayed += s;
                failed += f;
                moved += n;
                if n < BATCH {
                    break;
                }
            }
        }
        if moved == 0 {
            if sys::now_ns() > deadline {
                break;
            }
            wait_readable(fds, 100_000_000);
        }
    }
    eprintln!("rawrelay: done after {max_seconds} s: relayed {relayed}, failed {failed}");
    Ok(())
}
