//! The process's few direct system calls, in one place: signals, the wake
//! eventfd, CPU pinning, returning freed heap, the start-up pipes, a log
//! destination's append mode, `keystone reload`'s `kill`, and where an open
//! file lives. Only the last runs on a worker's event loop, and only after a
//! confined open was refused (an absolute symlink under a static root): two
//! `readlink`s of `/proc/self/fd`, answered from memory, never from a disk.
//! The rest is start-up, the main thread's signal wait, and the watchdog
//! (which interrupts a runaway handler from the main thread); every other
//! request-path operation goes through the worker's ring.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

/// The handled signals: drain (TERM, INT) and reload (HUP).
fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks the handled signals in this thread before workers start, so they
/// inherit the mask and only [`wait_signal`] ever sees them; ignores
/// SIGPIPE (sends use `MSG_NOSIGNAL` anyway).
pub fn block_signals() {
    let set = signal_set();
    // SAFETY: changes this thread's mask with a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // SAFETY: ignoring SIGPIPE process-wide touches no memory of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Waits up to `timeout` for a handled signal.
pub fn wait_signal(timeout: Duration) -> Option<i32> {
    let set = signal_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid set and timespec; no siginfo requested.
    let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (signal > 0).then_some(signal)
}

/// Installs `handler` for `signal` (process-wide, before workers start).
pub fn install_handler(signal: i32, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask;
    // SA_RESTART keeps interrupted syscalls transparent to the workers.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// The calling thread, for [`signal_thread`].
pub fn current_thread() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

/// Sends `signal` to `thread`, a live worker thread (workers run until the
/// process exits) whose handler was installed before it started.
pub fn signal_thread(thread: u64, signal: i32) {
    // SAFETY: `thread` came from `current_thread` on a thread that lives
    // as long as the process; the signal's handler is installed.
    unsafe { libc::pthread_kill(thread as libc::pthread_t, signal) };
}

/// An eventfd (the main thread wakes a worker through it).
pub fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the kernel attaches TLS to a TCP socket (`TCP_ULP "tls"`),
/// tried on a loopback connection made for the purpose (at start, on the
/// main thread; a modular TLS is loaded by the attempt). The error says
/// why not.
pub fn kernel_tls_probe() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let stream = std::net::TcpStream::connect(listener.local_addr()?)?;
    let ulp = keystone_tls::records::ULP_TLS;
    // SAFETY: a plain setsockopt on a socket we own, reading `ulp.len()`
    // bytes of a static string.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            keystone_tls::records::SOL_TCP as libc::c_int,
            keystone_tls::records::TCP_ULP as libc::c_int,
            ulp.as_ptr().cast(),
            ulp.len() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Adds `value` to eventfd `fd` (from the main thread).
pub fn wake(fd: &OwnedFd, value: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: writes 8 bytes from a stack u64 to an eventfd we own.
    unsafe { libc::write(fd.as_raw_fd(), (&value as *const u64).cast(), 8) };
}

/// Pins the calling thread to core `index % cpus` when there are no more
/// workers than cores.
pub fn pin_to_core(index: u32, workers: u32) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers as usize > cpus {
        return; // more workers than cores: let the scheduler place them
    }
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(index as usize % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Loading BPF objects parses the kernel's BTF (megabytes of heap, freed
/// once loaded); glibc keeps freed heap mapped unless asked, so give it
/// back: that is 18 MiB of resident memory on this kernel.
pub fn release_freed_heap() {
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
}

/// Sends SIGHUP to `pid` (`keystone reload`); the errno on failure.
pub fn hang_up(pid: i32) -> Result<(), std::io::Error> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes writes to `fd` appends when it is a regular file opened without
/// `O_APPEND` (a shell's `2> file`). The log batches are written by several
/// rings at once (each worker's and the main thread's), and an io_uring
/// write "at the current position" does not hold the position across the
/// write as `write(2)` does: two threads' batches could land at the same
/// offset, one overwriting the other. With `O_APPEND` every write lands
/// whole at the end. Pipes, terminals and sockets are left as they are.
pub fn append_if_file(fd: &OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::from(fd.try_clone()?);
    if !file.metadata()?.file_type().is_file() {
        return Ok(());
    }
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFL on a descriptor we hold; no memory is passed.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if flags & libc::O_APPEND != 0 {
        return Ok(());
    }
    // SAFETY: F_SETFL with an int argument on a descriptor we hold.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_APPEND) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the open file `fd` lives beneath directory `dir`: the kernel's
/// own paths for both (`/proc/self/fd/N`, every link already resolved),
/// compared component by component, so `/srv/www2/x` is not beneath
/// `/srv/www`. Any failure to tell is "no".
pub fn opened_beneath(dir: std::os::fd::RawFd, fd: std::os::fd::RawFd) -> bool {
    let path_of = |fd: std::os::fd::RawFd| std::fs::read_link(format!("/proc/self/fd/{fd}"));
    match (path_of(dir), path_of(fd)) {
        (Ok(root), Ok(file)) => file != root && file.starts_with(&root),
        _ => false,
    }
}
