//! Helpers shared by the tests that start the real binary: a child process killed when dropped,
//! a free loopback port, and the Gateway API manifests of their config directories.

#![allow(dead_code, reason = "each test binary uses only some of the helpers")]

pub(crate) mod manifests;
pub(crate) mod ports;

use std::process::Child;

/// A child process that is killed and reaped when the test lets go of it, pass or fail.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port that was free on 127.0.0.1 a moment ago; see [`ports::free_port_on`].
pub(crate) fn free_port() -> u16 {
    ports::free_port_on(std::net::IpAddr::from([127, 0, 0, 1]))
}

/// `portcullis run` on `dir` in standalone mode, with `extra` arguments: listener port 80 moved
/// to a port picked here, the admin endpoint on another, output discarded. Returns the process
/// and the two ports, `(gateway, listen, admin)`.
pub(crate) fn run_gateway(dir: &std::path::Path, extra: &[&str]) -> (Killed, u16, u16) {
    let (gateway, listen, admin) = spawn_gateway(dir, extra, std::process::Stdio::null());
    (Killed(gateway), listen, admin)
}

/// [`run_gateway`] with stdout (the access log) as given, and the process itself, for tests
/// that read its output or wait for its exit.
pub(crate) fn spawn_gateway(
    dir: &std::path::Path,
    extra: &[&str],
    stdout: std::process::Stdio,
) -> (std::process::Child, u16, u16) {
    let (listen, admin) = (free_port(), free_port());
    let gateway = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config-dir"])
        .arg(dir)
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--port-offset", &(i32::from(listen) - 80).to_string()])
        .args(extra)
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the portcullis binary starts");
    (gateway, listen, admin)
}

/// Waits (at most 20 s) until the admin endpoint on `admin` says the gateway is ready.
pub(crate) async fn wait_ready(client: &reqwest::Client, admin: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while client
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The body of `GET path` on the admin endpoint on `admin`.
pub(crate) async fn admin_text(client: &reqwest::Client, admin: u16, path: &str) -> String {
    client
        .get(format!("http://127.0.0.1:{admin}{path}"))
        .send()
        .await
        .expect("the admin endpoint answers")
        .text()
        .await
        .expect("the admin endpoint sends a body")
}
