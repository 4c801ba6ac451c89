//! Clients that talk to the gateway: HTTP/1.1, HTTP/2 cleartext with prior knowledge, and
//! WebSocket, each over a fresh TCP connection per attempt with a 10 s limit, as upstream's
//! consistency rule asks. Redirects are never followed: their targets are other hosts.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::cases::WsMessage;

/// Upstream's limit for one HTTP attempt.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A reply as the judge needs it.
#[derive(Debug, Clone)]
pub(crate) struct HttpReply {
    pub(crate) status: u16,
    /// Every header line, names lowercase, in the order received.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
}

impl HttpReply {
    /// All values of a header (name compared case-insensitively).
    pub(crate) fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text, shortened for messages.
    pub(crate) fn body_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.chars().count() > 160 {
            format!("{}...", text.chars().take(160).collect::<String>())
        } else {
            text.to_string()
        }
    }
}

/// Which HTTP version a request goes out as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpVersion {
    Http1,
    H2cPriorKnowledge,
}

/// One HTTP request on a fresh connection to `addr`. `host` becomes the Host header (or the
/// `:authority` for HTTP/2); `headers` are sent as given, after it.
pub(crate) async fn request(
    version: HttpVersion,
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<HttpReply, String> {
    let attempt = async {
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|e| format!("method {method}: {e}"))?;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let uri = match version {
            HttpVersion::Http1 => path.to_string(),
            // HTTP/2 carries the host in :authority, taken from an absolute URI.
            HttpVersion::H2cPriorKnowledge => format!("http://{host}{path}"),
        };
        let mut builder = Request::builder().method(method).uri(uri);
        if version == HttpVersion::Http1 {
            builder = builder.header(http::header::HOST, host);
        }
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("header name {name}: {e}"))?;
            let value =
                HeaderValue::from_str(value).map_err(|e| format!("header value {value}: {e}"))?;
            builder = builder.header(name, value);
        }
        let req = builder
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        // The connection task ends with this attempt, whether it completes or times out.
        let guard: Option<AbortOnDrop>;
        let response = match version {
            HttpVersion::Http1 => {
                // Go's client writes canonical (Title-Case) header names, and so does upstream;
                // hyper would write them lowercase.
                let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                    .title_case_headers(true)
                    .handshake(io)
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                guard = Some(AbortOnDrop(tokio::spawn(async move {
                    let _ = conn.await;
                })));
                sender.send_request(req).await
            }
            HttpVersion::H2cPriorKnowledge => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                        .handshake(io)
                        .await
                        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
                guard = Some(AbortOnDrop(tokio::spawn(async move {
                    let _ = conn.await;
                })));
                sender.send_request(req).await
            }
        }
        .map_err(|e| format!("transport error: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        drop(guard);
        Ok(HttpReply {
            status: parts.status.as_u16(),
            headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no reply within {}s", REQUEST_TIMEOUT.as_secs())))
}

/// Aborts a spawned connection task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A plain GET on HTTP/1.1 (the admin endpoint).
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Result<HttpReply, String> {
    request(
        HttpVersion::Http1,
        addr,
        "GET",
        &addr.to_string(),
        path,
        &[],
    )
    .await
}

/// Opens a WebSocket through the gateway and runs the exchange: every message sent must come
/// back unchanged.
pub(crate) async fn websocket(
    addr: SocketAddr,
    host: &str,
    path: &str,
    origin: Option<&str>,
    exchange: &[WsMessage],
) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut req = format!("ws://{host}{path}")
            .into_client_request()
            .map_err(|e| format!("WebSocket request: {e}"))?;
        req.headers_mut().insert(
            http::header::HOST,
            HeaderValue::from_str(host).map_err(|e| e.to_string())?,
        );
        if let Some(origin) = origin {
            req.headers_mut().insert(
                http::header::ORIGIN,
                HeaderValue::from_str(origin).map_err(|e| e.to_string())?,
            );
        }
        let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .map_err(|e| format!("WebSocket handshake: {e}"))?;
        for m in exchange {
            let (send, want) = match (&m.send_text, &m.send_binary_hex) {
                (Some(text), _) => (
                    Message::text(text.clone()),
                    Message::text(m.expect_text.clone().unwrap_or_else(|| text.clone())),
                ),
                (None, Some(hex)) => {
                    let bytes = decode_hex(hex)?;
                    let want = match &m.expect_binary_hex {
                        Some(w) => decode_hex(w)?,
                        None => bytes.clone(),
                    };
                    (Message::binary(bytes), Message::binary(want))
                }
                (None, None) => return Err("an exchange entry sends nothing".to_string()),
            };
            ws.send(send)
                .await
                .map_err(|e| format!("WebSocket send: {e}"))?;
            let got = loop {
                match ws.next().await {
                    Some(Ok(msg)) if msg.is_text() || msg.is_binary() => break msg,
                    Some(Ok(msg)) if msg.is_close() => {
                        return Err("the WebSocket was closed before the echo".to_string())
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("WebSocket receive: {e}")),
                    None => return Err("the WebSocket ended before the echo".to_string()),
                }
            };
            if got != want {
                return Err(format!("WebSocket echoed {got:?}, want {want:?}"));
            }
        }
        let _ = ws.close(None).await;
        Ok(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "WebSocket exchange not done within {}s",
                REQUEST_TIMEOUT.as_secs()
            ))
        })
}

/// `"0102ff"` -> `[1, 2, 255]`.
pub(crate) fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err(format!("odd-length hex {hex:?}"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| format!("hex {hex:?}: {e}")))
        .collect()
}
