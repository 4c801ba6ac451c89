//! A small echo backend for the bundled example: `portcullis echo --listen ADDR --name NAME`
//! answers every request with JSON naming itself and describing the request it received, so
//! that `curl` through the gateway shows which backend answered and what the gateway changed.

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
                    let headers: serde_json::Map<String, serde_json::Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or(""))))
                        .collect();
                    let body = json!({
                        "backend": name,
                        "method": req.method().as_str(),
                        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
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
