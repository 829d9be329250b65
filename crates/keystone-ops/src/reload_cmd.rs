//! `keystone reload --pid PID`: which process may be sent SIGHUP, and what
//! a refused signal means. SIGHUP's default action ends a process, so
//! anything that is not a keystone server is refused before the signal is
//! sent (the server sends it: this crate makes no syscall of its own).

/// Whether `pid` names one running keystone process; the reason if not.
pub fn check_target(pid: i32) -> Result<(), String> {
    // kill(0) and kill(-N) signal process groups, kill(-1) every process:
    // only a single positive pid is a valid target.
    if pid <= 0 {
        return Err(format!(
            "--pid {pid} is not a process id (must be positive)"
        ));
    }
    let comm_path = format!("/proc/{pid}/comm");
    let comm = match std::fs::read_to_string(&comm_path) {
        Ok(comm) => comm,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("no process with pid {pid}"));
        }
        Err(err) => return Err(format!("cannot read {comm_path}: {err}")),
    };
    let comm = comm.trim_end();
    if !comm.starts_with("keystone") {
        return Err(format!(
            "process {pid} is '{comm}', not keystone; refusing to send it SIGHUP"
        ));
    }
    Ok(())
}

/// What `kill(pid, SIGHUP)` failing with `err` means.
pub fn kill_failed(pid: i32, err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::ESRCH) => format!("no process with pid {pid} (it exited)"),
        Some(libc::EPERM) => format!("not permitted to signal process {pid} ({err})"),
        _ => format!("kill({pid}, SIGHUP) failed: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_keystone_process_is_a_target() {
        assert!(check_target(0).unwrap_err().contains("must be positive"));
        assert!(check_target(-1).unwrap_err().contains("must be positive"));
        let mut sleep = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        // Between fork and exec the child still bears this thread's name.
        let comm = format!("/proc/{}/comm", sleep.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_to_string(&comm).unwrap() != "sleep\n" {
            assert!(std::time::Instant::now() < deadline, "sleep never ran");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let refused = check_target(sleep.id() as i32).unwrap_err();
        sleep.kill().unwrap();
        sleep.wait().unwrap();
        assert!(
            refused.contains("is 'sleep', not keystone; refusing"),
            "{refused}"
        );
        assert!(check_target(i32::MAX).unwrap_err().contains("no process"));
    }
}
