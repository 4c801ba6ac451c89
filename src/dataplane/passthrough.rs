//! TLS passthrough: connections to a TLS socket are routed by the SNI of their ClientHello,
//! read with a peek so that the bytes stay in the socket. A passthrough listener's TLSRoutes
//! forward the raw stream to a backend endpoint; a terminating (HTTPS) listener on the same
//! socket gets the connection for a normal handshake.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::socket::{recv, MsgFlags};

use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::routing::table::{takes_server_name, Backend, RoutingTable, Rule};
use crate::tls::client_hello::{self, Hello};

/// How long a backend may take to accept a forwarded connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do with a TLS connection after its ClientHello.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Terminate TLS here (an HTTPS listener took the SNI).
    Terminate,
    /// Terminate TLS here and forward the decrypted stream to this endpoint (a TLS listener in
    /// Terminate mode).
    TerminateTcp(SocketAddr),
    /// Forward the raw stream to this endpoint.
    Forward(SocketAddr),
    /// Close the connection: no listener or route serves the SNI, or the route has no endpoint.
    Reject,
}

/// Why no ClientHello was had.
#[derive(Debug, PartialEq, Eq)]
pub enum Unheard {
    /// The client closed (or reset) the connection first.
    Closed,
    /// The deadline passed.
    TimedOut,
}

/// Peeks until the ClientHello is complete (or is clearly not TLS), by `until`.
///
/// A peek returns at once while any byte is buffered, so an incomplete hello is not peeked at
/// again until more bytes come: the readiness the peek left is cleared, what is buffered looked
/// at once more (bytes may have come in between), and the next arrival waited for. A client
/// that sends part of a hello and stops costs nothing while it waits.
pub async fn peek_client_hello(
    tcp: &TcpStream,
    until: tokio::time::Instant,
) -> Result<Hello, Unheard> {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    let mut buf = vec![0u8; client_hello::MAX_HELLO];
    let mut n = tokio::time::timeout_at(until, tcp.peek(&mut buf))
        .await
        .map_err(|_| Unheard::TimedOut)?
        .map_err(|_| Unheard::Closed)?;
    loop {
        if n == 0 {
            return Err(Unheard::Closed); // closed before saying anything more
        }
        match client_hello::parse(&buf[..n]) {
            Hello::Incomplete(need) if need <= buf.len() => {
                let _ = tcp.try_io(Interest::READABLE, || {
                    Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                });
                let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
                match recv(tcp.as_raw_fd(), &mut buf, flags) {
                    Ok(now) if now != n => {
                        n = now;
                        continue;
                    }
                    Ok(_) | Err(_) => {}
                }
                let ready = tokio::time::timeout_at(until, tcp.ready(Interest::READABLE))
                    .await
                    .map_err(|_| Unheard::TimedOut)?
                    .map_err(|_| Unheard::Closed)?;
                if ready.is_read_closed() {
                    return Err(Unheard::Closed); // the client gave up, its hello unfinished
                }
                n = tokio::time::timeout_at(until, tcp.peek(&mut buf))
                    .await
                    .map_err(|_| Unheard::TimedOut)?
                    .map_err(|_| Unheard::Closed)?;
            }
            Hello::Incomplete(_) => return Ok(Hello::NotTls),
            other => return Ok(other),
        }
    }
}

/// TLS alert: the server name is not one served here (RFC 6066, section 3).
pub const UNRECOGNIZED_NAME: u8 = 112;
/// TLS alert: no certificate can be chosen (a client without SNI where every listener has a
/// hostname).
pub const HANDSHAKE_FAILURE: u8 = 40;

/// Refuses a connection whose ClientHello nothing here serves with a fatal TLS `alert`, so that
/// the client can say why ("unrecognized name") instead of reporting a reset connection. The
/// ClientHello, only peeked so far, is read first: a socket closed with unread data sends a
/// reset, which could reach the client before the alert.
pub async fn refuse(mut tcp: TcpStream, alert: u8) {
    let mut buf = vec![0u8; client_hello::MAX_HELLO];
    while matches!(tcp.try_read(&mut buf), Ok(n) if n > 0) {}
    // A record of type alert (21), TLS 1.2 on the record layer (as TLS 1.3 sends it too), two
    // bytes long: level fatal (2), then the description.
    let record = [21, 3, 3, 0, 2, 2, alert];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(&record).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// Chooses what happens to a connection on `bind` whose ClientHello named `sni`.
pub fn choose(table: &RoutingTable, bind: &SocketAddr, sni: Option<&str>) -> Route {
    let Some(listener) = table.listener_for_hello(bind, sni) else {
        return Route::Reject;
    };
    let terminate_tcp = listener.scheme == "tls" && listener.certificate.is_some();
    if listener.certificate.is_some() && !terminate_tcp {
        return Route::Terminate;
    }
    let rule = listener
        .passthrough
        .iter()
        .find(|(host, _)| takes_server_name(host.as_deref(), sni));
    match rule.and_then(|(_, rule)| pick_endpoint(rule)) {
        Some(endpoint) if terminate_tcp => Route::TerminateTcp(endpoint),
        Some(endpoint) => Route::Forward(endpoint),
        None => Route::Reject,
    }
}

fn pick_endpoint(rule: &Rule) -> Option<SocketAddr> {
    let backend = match rule.backends.len() {
        0 => return None,
        1 => &rule.backends[0],
        _ => {
            let mut point = rand::rng().random_range(0..rule.total_weight);
            rule.backends.iter().find(|b| {
                let hit = point < b.weight;
                point = point.saturating_sub(b.weight);
                hit
            })?
        }
    };
    match backend.target.as_ref() {
        Backend::Service(s) => s.pick(),
        Backend::Invalid { .. } => None,
    }
}

/// Copies bytes both ways between the client and `endpoint` until either side closes.
pub async fn forward(client: TcpStream, endpoint: SocketAddr) {
    forward_stream(client, endpoint).await
}

/// Copies bytes both ways between a client stream (raw, or already decrypted) and `endpoint`.
pub async fn forward_stream<S>(mut client: S, endpoint: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await;
    let mut upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(err)) => {
            tracing::debug!(%endpoint, error = %err, "passthrough backend refused the connection");
            return;
        }
        Err(_) => {
            tracing::debug!(%endpoint, "passthrough backend connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%endpoint, error = %err, "passthrough connection ended with an error");
    }
    let _ = client.shutdown().await;
}
