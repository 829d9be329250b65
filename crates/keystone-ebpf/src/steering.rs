//! Loading the reuseport program, filling its maps and attaching it to a
//! listening group.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya::maps::{Array, Map, PerCpuArray, ReusePortSockArray};
use aya::programs::SkReuseport;
use aya::Ebpf;
use socket2::SockRef;

use crate::error::{errno_in_chain, reason_chain};
use crate::{EbpfError, REUSEPORT_OBJECT, WORKERS_MAX};

/// Names in `ebpf/reuseport.c`.
const PROGRAM_NAME: &str = "select_worker";
const WORKERS_MAP: &str = "workers";
const CONFIG_MAP: &str = "config";
const SELECTED_MAP: &str = "selected";
/// The slot of `config` holding the live worker count.
const CONFIG_WORKER_COUNT: u32 = 0;

/// Steering attached to one reuseport group. Keeps the loaded program and
/// its maps open so counters can be read; the kernel keeps the program
/// attached to the group for the group's lifetime, with or without us.
pub struct ReuseportSteering {
    ebpf: Ebpf,
    worker_count: u32,
}

impl std::fmt::Debug for ReuseportSteering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReuseportSteering")
            .field("worker_count", &self.worker_count)
            .finish_non_exhaustive()
    }
}

fn map_error(what: &str, error: &(dyn std::error::Error + 'static)) -> EbpfError {
    EbpfError::Map {
        reason: format!("{what}: {}", reason_chain(error)),
    }
}

fn load_error(what: &str, error: &(dyn std::error::Error + 'static)) -> EbpfError {
    EbpfError::Load {
        reason: format!("{what}: {}", reason_chain(error)),
    }
}

/// Checks what the kernel would otherwise refuse with a bare EINVAL: every
/// socket has SO_REUSEPORT and all share the first one's local address.
fn check_group(sockets: &[BorrowedFd<'_>]) -> Result<(), EbpfError> {
    let io_error = |index: usize, call: &str, error: std::io::Error| EbpfError::Attach {
        errno: error.raw_os_error().unwrap_or(0),
        reason: format!("socket {index}: {call}: {error}"),
    };
    let first_address = SockRef::from(&sockets[0])
        .local_addr()
        .map_err(|error| io_error(0, "getsockname", error))?;
    for (index, socket) in sockets.iter().enumerate() {
        let socket_ref = SockRef::from(socket);
        let reuse_port = socket_ref
            .reuse_port()
            .map_err(|error| io_error(index, "getsockopt(SO_REUSEPORT)", error))?;
        if !reuse_port {
            return Err(EbpfError::Attach {
                errno: libc::EINVAL,
                reason: format!(
                    "socket {index} (fd {}) has no SO_REUSEPORT: set it before bind(2)",
                    socket.as_raw_fd()
                ),
            });
        }
        let address = socket_ref
            .local_addr()
            .map_err(|error| io_error(index, "getsockname", error))?;
        if address != first_address {
            return Err(EbpfError::Attach {
                errno: libc::EINVAL,
                reason: format!(
                    "socket {index} is bound to {:?}, socket 0 to {:?}: not one reuseport group",
                    address.as_socket(),
                    first_address.as_socket()
                ),
            });
        }
    }
    Ok(())
}

/// Loads the embedded object and its program, and checks the `workers`
/// map against [`WORKERS_MAX`] (the C and Rust consts must agree).
fn load() -> Result<Ebpf, EbpfError> {
    let mut ebpf =
        Ebpf::load(REUSEPORT_OBJECT).map_err(|error| load_error("ebpf/reuseport.bpf.o", &error))?;
    let program: &mut SkReuseport = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| EbpfError::Load {
            reason: format!("program {PROGRAM_NAME} missing from the object"),
        })?
        .try_into()
        .map_err(|error| load_error(PROGRAM_NAME, &error))?;
    program
        .load()
        .map_err(|error| load_error(PROGRAM_NAME, &error))?;

    let Some(Map::ReusePortSockArray(workers)) = ebpf.map(WORKERS_MAP) else {
        return Err(EbpfError::Load {
            reason: format!("map {WORKERS_MAP} missing or not a REUSEPORT_SOCKARRAY"),
        });
    };
    let max_entries = workers
        .info()
        .map_err(|error| map_error(WORKERS_MAP, &error))?
        .max_entries();
    if max_entries != WORKERS_MAX {
        return Err(EbpfError::Load {
            reason: format!(
                "map {WORKERS_MAP} has {max_entries} slots but WORKERS_MAX is {WORKERS_MAX}: \
                 keep ebpf/reuseport.c and keystone-ebpf in sync"
            ),
        });
    }
    Ok(ebpf)
}

impl ReuseportSteering {
    /// `sockets[i]` is worker i's listening socket: all bound to the same
    /// address with SO_REUSEPORT (set before bind), and listening, because
    /// the kernel only stores listening TCP sockets in a socket array.
    /// Loads the embedded object, stores each socket in `workers[i]`, sets
    /// the live worker count, then attaches the program to the group
    /// (attaching through one socket applies to the whole group), so the
    /// first steered connection already sees every worker.
    pub fn attach(sockets: &[BorrowedFd<'_>]) -> Result<ReuseportSteering, EbpfError> {
        if sockets.len() > WORKERS_MAX as usize {
            return Err(EbpfError::TooManyWorkers {
                workers: sockets.len(),
                max: WORKERS_MAX,
            });
        }
        if sockets.is_empty() {
            return Err(EbpfError::Attach {
                errno: libc::EINVAL,
                reason: "no sockets: steering needs at least one listening socket".to_owned(),
            });
        }
        check_group(sockets)?;
        let worker_count = u32::try_from(sockets.len()).expect("bounded by WORKERS_MAX above");
        let mut ebpf = load()?;

        let mut workers: ReusePortSockArray<_> = ebpf
            .map_mut(WORKERS_MAP)
            .expect("checked by load()")
            .try_into()
            .map_err(|error| map_error(WORKERS_MAP, &error))?;
        for (index, socket) in (0..worker_count).zip(sockets) {
            workers
                .set(index, socket, 0)
                .map_err(|error| EbpfError::Map {
                    reason: format!(
                        "{WORKERS_MAP}[{index}] = fd {}: {} (the kernel stores only SO_REUSEPORT \
                     sockets that are listening (TCP) or bound (UDP))",
                        socket.as_raw_fd(),
                        reason_chain(&error)
                    ),
                })?;
        }

        let mut config: Array<_, u32> = ebpf
            .map_mut(CONFIG_MAP)
            .ok_or_else(|| EbpfError::Load {
                reason: format!("map {CONFIG_MAP} missing from the object"),
            })?
            .try_into()
            .map_err(|error| map_error(CONFIG_MAP, &error))?;
        config
            .set(CONFIG_WORKER_COUNT, worker_count, 0)
            .map_err(|error| map_error(CONFIG_MAP, &error))?;

        let program: &mut SkReuseport = ebpf
            .program_mut(PROGRAM_NAME)
            .expect("checked by load()")
            .try_into()
            .map_err(|error| load_error(PROGRAM_NAME, &error))?;
        program
            .attach(sockets[0])
            .map_err(|error| EbpfError::Attach {
                errno: errno_in_chain(&error),
                reason: format!("SO_ATTACH_REUSEPORT_EBPF: {}", reason_chain(&error)),
            })?;
        Ok(ReuseportSteering { ebpf, worker_count })
    }

    /// How many workers the program spreads connections over.
    pub fn worker_count(&self) -> u32 {
        self.worker_count
    }

    /// Connections steered to each worker since attach, summed over CPUs;
    /// index i is worker i. Fallbacks to kernel hashing are not counted.
    pub fn selections_per_worker(&self) -> Result<Vec<u64>, EbpfError> {
        let selected: PerCpuArray<_, u64> = self
            .ebpf
            .map(SELECTED_MAP)
            .ok_or_else(|| EbpfError::Load {
                reason: format!("map {SELECTED_MAP} missing from the object"),
            })?
            .try_into()
            .map_err(|error| map_error(SELECTED_MAP, &error))?;
        let mut totals = Vec::with_capacity(self.worker_count as usize);
        for index in 0..self.worker_count {
            let per_cpu = selected
                .get(&index, 0)
                .map_err(|error| map_error(SELECTED_MAP, &error))?;
            totals.push(per_cpu.iter().sum());
        }
        debug_assert_eq!(totals.len(), self.worker_count as usize);
        Ok(totals)
    }
}
