//! A small echo backend for the bundled example: `portcullis echo --listen ADDR --name NAME`
//! answers every request with JSON naming itself and describing the request it received, so
//! that `curl` through the gateway shows which backend answered and what the gateway changed.
//! A `delay_ms=N` query parameter delays the answer, for trying timeouts and draining.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Serves the echo on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, name: String) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, %name, "echo backend listening");
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let name = name.clone();
                async move {
                    let delay = req.uri().query().and_then(|q| {
                        q.split('&')
                            .find_map(|p| p.strip_prefix("delay_ms="))
                            .and_then(|v| v.parse::<u64>().ok())
                    });
                    if let Some(ms) = delay {
                        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
                    }
                    let headers: serde_json::Map<String, serde_json::Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or(""))))
                        .collect();
                    let body = json!({
                        "backend": name,
                        "method": req.method().as_str(),
                        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
                        // The request target as it came, absolute form included.
                        "target": req.uri().to_string(),
                        "headers": headers,
                    });
                    let mut resp = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
