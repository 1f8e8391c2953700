//! Thin wrappers over the system: monotonic clock in nanoseconds, CPU pinning, timer
//! slack, UDP sockets with large buffers, and the `/proc` figures a run reports.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Nanoseconds on `CLOCK_MONOTONIC` (the same clock in every process of this host).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

pub fn sleep(d: Duration) {
    std::thread::sleep(d);
}

/// Pin the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Make timed waits (`ppoll`) wake on time instead of up to 50 µs late.
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value is a live i32 and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A nonblocking UDP socket bound to `addr` with send and receive buffers of about
/// `buf_bytes` (`SO_*BUFFORCE` as root, otherwise capped by `net.core.*mem_max`).
pub fn udp_socket(addr: SocketAddr, buf_bytes: i32) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_nonblocking(true)?;
    let fd = sock.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, buf_bytes).is_err() {
            setsockopt_int(fd, libc::SOL_SOCKET, plain, buf_bytes)?;
        }
    }
    Ok(sock)
}

pub fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

pub fn v4(addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => Err(io::Error::other(format!(
            "{addr}: the benchmark speaks IPv4 only"
        ))),
    }
}

/// CPU time of a whole process (every thread), from `/proc/PID/stat` (utime + stime,
/// clock ticks) and from the threads' `schedstat` (nanoseconds on a CPU).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    /// utime + stime in microseconds (tick resolution).
    pub stat_us: u64,
    /// Sum of the threads' on-CPU time in microseconds (`/proc/PID/task/*/schedstat`).
    pub sched_us: u64,
}

pub fn cpu_time(pid: i32) -> io::Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unreadable /proc/PID/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3 of stat(5), utime 14, stime 15.
    let num = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unreadable /proc/PID/stat"))
    };
    let ticks = num(11)? + num(12)?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut sched_ns = 0u64;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
                sched_ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Ok(CpuTime {
        stat_us: ticks * 1_000_000 / hz,
        sched_us: sched_ns / 1000,
    })
}

/// Datagrams dropped by the kernel at the UDP sockets bound to these local ports
/// (last column of `/proc/net/udp`), summed.
pub fn udp_socket_drops(ports: &[u16]) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else {
        return 0;
    };
    let mut total = 0;
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let Some(local) = cols.get(1) else { continue };
        let Some((_, port_hex)) = local.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port_hex, 16) else {
            continue;
        };
        if ports.contains(&port) {
            total += cols.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

/// The host-wide count of UDP datagrams dropped for a full receive buffer
/// (`Udp: RcvbufErrors` in `/proc/net/snmp`).
pub fn udp_rcvbuf_errors() -> u64 {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Host-wide CPU time from `/proc/stat` (all CPUs), in microseconds: busy (user, nice,
/// system, irq, softirq) and stolen by the hypervisor.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCpu {
    pub busy_us: u64,
    pub steal_us: u64,
}

pub fn host_cpu() -> HostCpu {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return HostCpu::default();
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return HostCpu::default();
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // user nice system idle iowait irq softirq steal
    HostCpu {
        busy_us: (at(0) + at(1) + at(2) + at(5) + at(6)) * 1_000_000 / hz,
        steal_us: at(7) * 1_000_000 / hz,
    }
}

/// CPU used on the host over `interval` by everything but the processes `pids`, in %
/// of one CPU (tick resolution).
pub fn others_busy_pct(pids: &[i32], interval: Duration) -> f64 {
    let ours = || -> u64 {
        pids.iter()
            .filter_map(|&p| cpu_time(p).ok())
            .map(|c| c.stat_us)
            .sum()
    };
    let (h0, o0, t0) = (host_cpu(), ours(), now_ns());
    sleep(interval);
    let (h1, o1, t1) = (host_cpu(), ours(), now_ns());
    let others = h1
        .busy_us
        .saturating_sub(h0.busy_us)
        .saturating_sub(o1.saturating_sub(o0));
    100.0 * others as f64 / ((t1.saturating_sub(t0)).max(1) as f64 / 1000.0)
}
