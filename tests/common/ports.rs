//! Ports for the servers a test starts, shared by the standalone tests (`common`) and the
//! Kubernetes-mode ones (`support`).

use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// A port that was free on `ip` a moment ago, never the same one twice in one test binary.
///
/// The port is picked below Linux's ephemeral range (32768 and up), not by the kernel: a port
/// the kernel hands out for `bind(0)` is also one it may pick as the source port of any outgoing
/// connection, the gateway's to its backends and API server included, in the moment between
/// this probe and the bind of whoever is given the port. Each test binary starts at a place of
/// its own, by its process id, and counts up from there, so that its tests, which run side by
/// side, are never given the same port.
pub(crate) fn free_port_on(ip: IpAddr) -> u16 {
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 32_768 - FIRST;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % COUNT;
    for _ in 0..COUNT {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT;
        let port = u16::try_from(FIRST + offset).expect("below 32768");
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} between {FIRST} and 32767");
}
