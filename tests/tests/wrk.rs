//! A real load generator against `GET /`: behaviour under concurrent keep-alive
//! load (no errors, no non-2xx), not speed. Fails where `wrk` is absent, unless
//! `KEYSTONE_SKIP_MISSING_TOOLS=1` says to skip.

use std::process::{Command, Stdio};
use std::time::Duration;

use keystone_tests::{require_tool, wait_timeout, Server};

/// wrk's own run is 2 s; the rest is slack for start-up on a loaded machine.
const WRK_TIMEOUT: Duration = Duration::from_secs(30);

/// The lines of wrk's report that mean something went wrong.
const ERROR_MARKERS: &[&str] = &["Socket errors", "Non-2xx or 3xx responses"];

fn check(report: &str) {
    for marker in ERROR_MARKERS {
        assert!(
            !report.contains(marker),
            "wrk reported {marker:?}:\n{report}"
        );
    }
    // "  12345 requests in 2.00s, 1.23MB read"
    let requests: u64 = report
        .lines()
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no request count in the wrk report:\n{report}"));
    assert!(requests > 0, "wrk completed no requests:\n{report}");
}

#[test]
fn wrk_keep_alive_load_has_no_errors() {
    if !require_tool("wrk", "Debian package wrk") {
        return;
    }
    for workers in ["1", "2"] {
        let server = Server::start(None, &["--workers", workers]);
        let dir = tempfile::tempdir().expect("tempdir");
        let report_path = dir.path().join("wrk.txt");
        let mut child = Command::new("wrk")
            .args(["-t1", "-c16", "-d2s", &server.url("/")])
            .stdout(std::fs::File::create(&report_path).expect("report file"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning wrk");
        let status = wait_timeout(&mut child, WRK_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let report = std::fs::read_to_string(&report_path).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "wrk failed or hung (--workers {workers}):\n{report}"
        );
        check(&report);
        keystone_tests::assert_no_panic(&server.log(), "under wrk");
    }
}
