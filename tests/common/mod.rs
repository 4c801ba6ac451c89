//! Helpers shared by the tests that start the real binary: a child process killed when dropped,
//! a free loopback port, and the Gateway API manifests of their config directories.

#![allow(dead_code, reason = "each test binary uses only some of the helpers")]

pub(crate) mod manifests;

use std::net::TcpListener;
use std::process::Child;

/// A child process that is killed and reaped when the test lets go of it, pass or fail.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("loopback has a free port")
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}
