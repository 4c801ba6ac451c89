//! Listening sockets that come and go with the configuration.
//!
//! Pingora's own services fix their listeners when the server starts, but Gateway listeners are
//! added and removed at runtime. So the gateway runs its own accept loop per socket: it accepts a
//! tokio `TcpStream`, sets `TCP_NODELAY` (without it, Nagle's algorithm meets delayed ACKs and
//! every keep-alive response waits about 40 ms), turns it into a Pingora `Stream` whose socket
//! digest already knows both addresses (so no request pays a `getsockname` call), and hands it to
//! the shared proxy through `ServerApp::process_new`, looping while the connection is reusable.
//!
//! Removing a socket stops its accept loop only: connections already accepted finish their
//! requests. Adding one never touches the others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::GetSocketDigest;
use pingora_core::protocols::SocketDigest;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics::Metrics;
use super::proxy::Proxy;

/// The running accept loops, by socket address.
pub struct Listeners {
    app: Arc<HttpProxy<Proxy>>,
    metrics: Arc<Metrics>,
    shutdown: ShutdownWatch,
    running: HashMap<SocketAddr, JoinHandle<()>>,
    /// Sockets that could not be bound, with the error; retried on the next reconcile.
    pub failed: HashMap<SocketAddr, String>,
}

impl Listeners {
    /// No sockets yet.
    pub fn new(app: Arc<HttpProxy<Proxy>>, metrics: Arc<Metrics>, shutdown: ShutdownWatch) -> Self {
        Listeners {
            app,
            metrics,
            shutdown,
            running: HashMap::new(),
            failed: HashMap::new(),
        }
    }

    /// Binds the sockets in `wanted` that are not bound yet and stops the ones not wanted.
    pub fn reconcile(&mut self, wanted: &[SocketAddr]) {
        self.running.retain(|addr, task| {
            let keep = wanted.contains(addr);
            if !keep {
                task.abort();
                tracing::info!(%addr, "listener socket closed");
            }
            keep
        });
        self.failed.clear();
        for addr in wanted {
            if self.running.contains_key(addr) {
                continue;
            }
            match bind(*addr) {
                Ok(listener) => {
                    tracing::info!(%addr, "listener socket open");
                    let task = tokio::spawn(accept_loop(
                        listener,
                        self.app.clone(),
                        self.metrics.clone(),
                        self.shutdown.clone(),
                    ));
                    self.running.insert(*addr, task);
                }
                Err(err) => {
                    tracing::warn!(%addr, error = %err, "cannot bind listener socket; check that the address exists and the port is free");
                    self.failed.insert(*addr, err.to_string());
                }
            }
        }
    }

    /// Stops accepting everywhere and tells idle keep-alive connections to close (shutdown).
    pub async fn close_all(&mut self) {
        for (_, task) in self.running.drain() {
            task.abort();
        }
        self.app.http_cleanup().await;
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    listener: TcpListener,
    app: Arc<HttpProxy<Proxy>>,
    metrics: Arc<Metrics>,
    shutdown: ShutdownWatch,
) {
    let local = listener.local_addr().ok();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
        let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(peer)));
        let _ = digest.local_addr.set(local.map(PingoraAddr::Inet));
        let mut stream = Stream::from(tcp);
        stream.set_socket_digest(digest);
        let app = app.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        metrics.connections_accepted.inc();
        metrics.connections_open.inc();
        tokio::spawn(async move {
            let mut next: Option<pingora_core::protocols::Stream> = Some(Box::new(stream));
            while let Some(stream) = next.take() {
                next = app.process_new(stream, &shutdown).await;
            }
            metrics.connections_open.dec();
        });
    }
}

/// Creates the shutdown signal Pingora's apps watch.
pub fn shutdown_channel() -> (watch::Sender<bool>, ShutdownWatch) {
    watch::channel(false)
}
