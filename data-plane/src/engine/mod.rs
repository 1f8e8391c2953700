//! The packet engine: one worker thread per configured core, pinned, each owning its
//! sessions' sockets and relays ([`core::CoreState`]); nothing is shared on the packet
//! path. The RPC thread hands sessions to cores through per-core command queues and
//! wakes the core. Two backends run the same per-packet code: io_uring ([`uring`]) and
//! portable readiness + `recv_from`/`send_to` ([`portable`]).

pub mod core;
pub mod pin;
pub mod portable;
pub mod ports;
pub mod uring;

use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::Instant;

use sbc_shared::config::EngineKind;
use tracing::{info, warn};

use self::core::{CoreCommand, CoreCounters, CoreState};

/// How a core is woken when a command is queued.
#[derive(Debug)]
enum Waker {
    Mio(mio::Waker),
    Uring(uring::Waker),
}

impl Waker {
    fn wake(&self) {
        let r = match self {
            Waker::Mio(w) => w.wake(),
            Waker::Uring(w) => w.wake(),
        };
        if let Err(e) = r {
            warn!(error = %e, "cannot wake a media core");
        }
    }
}

#[derive(Debug)]
struct CoreHandle {
    cpu: usize,
    tx: Sender<CoreCommand>,
    waker: Waker,
    counters: Arc<CoreCounters>,
    thread: Option<JoinHandle<()>>,
}

/// The running engine.
#[derive(Debug)]
pub struct Engine {
    kind: EngineKind,
    cores: Vec<CoreHandle>,
    epoch: Instant,
}

impl Engine {
    /// Start one worker per CPU in `cpus` (or one on the last CPU if empty). Asking for
    /// io_uring where the kernel refuses it starts the portable engine and says why.
    pub fn start(requested: EngineKind, cpus: &[u16], epoch: Instant) -> std::io::Result<Engine> {
        let cpus: Vec<usize> = if cpus.is_empty() {
            vec![pin::available_cpus().saturating_sub(1)]
        } else {
            cpus.iter().map(|&c| usize::from(c)).collect()
        };
        let kind = match requested {
            EngineKind::Portable => {
                info!("packet engine: portable (chosen in config)");
                EngineKind::Portable
            }
            EngineKind::IoUring => match uring::probe() {
                Ok(()) => {
                    info!("packet engine: io_uring");
                    EngineKind::IoUring
                }
                Err(why) => {
                    warn!(reason = %why, "packet engine: io_uring unavailable, running the portable engine");
                    EngineKind::Portable
                }
            },
        };
        let mut cores = Vec::with_capacity(cpus.len());
        for (index, &cpu) in cpus.iter().enumerate() {
            let (tx, rx) = channel();
            let counters = Arc::new(CoreCounters::default());
            let state = CoreState::new(counters.clone());
            let name = format!("sbc-media-core{index}");
            let (waker, thread) = match kind {
                EngineKind::Portable => {
                    let poll = mio::Poll::new()?;
                    let waker = mio::Waker::new(poll.registry(), portable::WAKER)?;
                    let thread = std::thread::Builder::new().name(name).spawn(move || {
                        pin_or_warn(cpu);
                        portable::run(poll, rx, state, epoch);
                    })?;
                    (Waker::Mio(waker), thread)
                }
                EngineKind::IoUring => {
                    let (ring, waker) = uring::setup()?;
                    let thread = std::thread::Builder::new().name(name).spawn(move || {
                        pin_or_warn(cpu);
                        uring::run(ring, rx, state, epoch);
                    })?;
                    (Waker::Uring(waker), thread)
                }
            };
            info!(core = index, cpu, "packet worker started");
            cores.push(CoreHandle {
                cpu,
                tx,
                waker,
                counters,
                thread: Some(thread),
            });
        }
        Ok(Engine { kind, cores, epoch })
    }

    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// The instant packet timestamps count from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    pub fn core_count(&self) -> usize {
        self.cores.len()
    }

    /// The core with the fewest sessions (new sessions go there).
    pub fn least_loaded(&self) -> usize {
        self.cores
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| {
                c.counters
                    .sessions
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .map_or(0, |(i, _)| i)
    }

    /// Queue a command for `core` and wake it.
    pub fn send(&self, core: usize, cmd: CoreCommand) {
        let Some(c) = self.cores.get(core) else {
            warn!(core, "command for a core that does not exist");
            return;
        };
        if c.tx.send(cmd).is_err() {
            warn!(core, cpu = c.cpu, "media core has stopped; command lost");
            return;
        }
        c.waker.wake();
    }

    /// Per-core counters, for metrics.
    pub fn counters(&self) -> impl Iterator<Item = (usize, &CoreCounters)> {
        self.cores
            .iter()
            .enumerate()
            .map(|(i, c)| (i, &*c.counters))
    }

    /// Stop every worker and wait for it.
    pub fn stop(&mut self) {
        for c in &self.cores {
            let _ = c.tx.send(CoreCommand::Stop);
            c.waker.wake();
        }
        for c in &mut self.cores {
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pin_or_warn(cpu: usize) {
    if let Err(e) = pin::pin_current_thread(cpu) {
        warn!(cpu, error = %e, "cannot pin packet worker; it runs unpinned");
    }
}
