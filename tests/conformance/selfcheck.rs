//! Checks of the runner itself, run before any test: the pure helpers (Location parsing,
//! judging rules, step paths, certificate wording) and the echo backends talked to directly.
//!
//! This binary has no libtest harness (it prints its own report), so `#[test]` functions would
//! never run; these checks run on every invocation instead and take well under a second.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::cases::WsMessage;
use crate::client::{self, HttpVersion};
use crate::echo::{self, Echoes};
use crate::judge::Echoed;

/// The checks that need no sockets.
pub(crate) fn pure() -> Result<(), String> {
    crate::judge::self_check().map_err(|e| format!("judge: {e}"))?;
    crate::manifests::self_check().map_err(|e| format!("manifests: {e}"))?;
    crate::certs::self_check().map_err(|e| format!("certs: {e}"))?;
    let durations = [
        ("1s", Some(Duration::from_secs(1))),
        ("500ms", Some(Duration::from_millis(500))),
        ("1m30s", Some(Duration::from_secs(90))),
        ("1.5s", Some(Duration::from_millis(1500))),
        ("0", Some(Duration::ZERO)),
        ("soon", None),
        ("5", None),
    ];
    for (text, want) in durations {
        if echo::parse_go_duration(text) != want {
            return Err(format!("echo: parse_go_duration({text:?})"));
        }
    }
    if echo::canonical_header_name("x-header-set") != "X-Header-Set" {
        return Err("echo: canonical_header_name".into());
    }
    let q = echo::query_params("/retry/x?responseCode=500&succeedAfter=2&uuid=abc");
    if q.get("responseCode").map(String::as_str) != Some("500")
        || q.get("uuid").map(String::as_str) != Some("abc")
    {
        return Err("echo: query_params".into());
    }
    if client::decode_hex("01ff").ok() != Some(vec![1, 255]) {
        return Err("client: decode_hex".into());
    }
    Ok(())
}

/// Talks to one echo directly: the JSON description, response headers on demand, the
/// HTTP/2-only port, `/retry`, the WebSocket echo and the request record.
pub(crate) async fn echoes(echoes: &Echoes, namespace: &str, service: &str) -> Result<(), String> {
    let echo = echoes
        .get(namespace, service)
        .ok_or_else(|| format!("no echo for {namespace}/{service}"))?;
    let port = echo
        .real_port(3000)
        .ok_or("the echo has no port for target 3000")?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let path = format!("/selfcheck?id={}", uuid::Uuid::new_v4());
    let headers = vec![
        ("X-Multi".to_string(), "a".to_string()),
        ("x-multi".to_string(), "b".to_string()),
        (
            "X-Echo-Set-Header".to_string(),
            "X-Reply:one,X-Reply:two".to_string(),
        ),
    ];
    let reply = client::request(
        HttpVersion::Http1,
        addr,
        "GET",
        "example.com",
        &path,
        &headers,
    )
    .await?;
    let e = Echoed::parse(&reply.body).ok_or("the echo's reply is not its JSON")?;
    let body: serde_json::Value = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
    if e.service != service
        || body["path"] != path.as_str()
        || body["host"] != "example.com"
        || body["headers"]["X-Multi"] != serde_json::json!(["a", "b"])
    {
        return Err(format!("the echo described the request wrongly: {body}"));
    }
    if reply.header_values("x-reply") != ["one", "two"] {
        return Err(format!(
            "X-Echo-Set-Header not honoured: {:?}",
            reply.headers
        ));
    }
    if echo.seen_count(&path) != 1 {
        return Err("the echo did not record the request".into());
    }
    if let Some(h2c_port) = echo.real_port(3001) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, h2c_port));
        let r = client::request(HttpVersion::Http1, addr, "GET", "h", "/", &[]).await?;
        if r.status != 400 {
            return Err(format!(
                "the h2c-only port answered HTTP/1.1 with {}",
                r.status
            ));
        }
        let r = client::request(HttpVersion::H2cPriorKnowledge, addr, "GET", "h", "/", &[]).await?;
        let proto = serde_json::from_slice::<serde_json::Value>(&r.body)
            .map_err(|e| e.to_string())?["proto"]
            .clone();
        if r.status != 200 || proto != "HTTP/2.0" {
            return Err(format!(
                "the h2c-only port answered h2c with {} {proto}",
                r.status
            ));
        }
    }
    let retry = format!(
        "/retry/x?responseCode=503&succeedAfter=1&uuid={}",
        uuid::Uuid::new_v4()
    );
    let first = client::request(HttpVersion::Http1, addr, "GET", "h", &retry, &[]).await?;
    let second = client::request(HttpVersion::Http1, addr, "GET", "h", &retry, &[]).await?;
    if first.status != 503 || second.status != 200 {
        return Err(format!(
            "/retry answered {} then {}",
            first.status, second.status
        ));
    }
    let reset = format!("/retry/x?succeedAfter=1&uuid={}", uuid::Uuid::new_v4());
    if client::request(HttpVersion::Http1, addr, "GET", "h", &reset, &[])
        .await
        .is_ok()
    {
        return Err("/retry without responseCode did not drop the connection".into());
    }
    let exchange = [
        WsMessage {
            send_text: Some("hello".into()),
            expect_text: Some("hello".into()),
            send_binary_hex: None,
            expect_binary_hex: None,
        },
        WsMessage {
            send_text: None,
            expect_text: None,
            send_binary_hex: Some("0102".into()),
            expect_binary_hex: Some("0102".into()),
        },
    ];
    client::websocket(addr, "h", "/ws", Some("ws://selfcheck"), &exchange).await?;
    Ok(())
}
