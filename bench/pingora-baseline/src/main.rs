//! The floor under the gateway: a Pingora proxy that does nothing but forward.
//!
//! `bench/run --only baseline` runs it beside Portcullis with the same load, so that the cost
//! of Pingora's own request path can be told apart from the cost of what the gateway adds
//! (routing, filters, forwarding headers, metrics). It sends every request, HTTP/1.1 or
//! cleartext HTTP/2, to one backend address, with the Pingora settings the gateway uses
//! wherever Pingora offers one: one thread without work stealing, mimalloc, no downstream
//! modules, 1024 idle backend connections. Everything else is Pingora's default.
//!
//! ```text
//! pingora-baseline LISTEN_ADDR BACKEND_ADDR
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::modules::http::HttpModules;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

/// The same allocator as the gateway's, so that the two differ only in what runs per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Forwards every request to `backend`.
struct Forward {
    backend: String,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.backend.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, backend] = args.as_slice() else {
        eprintln!("usage: pingora-baseline LISTEN_ADDR BACKEND_ADDR (such as 127.0.0.1:8080 127.0.0.1:9000)");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: 1024,
        // Stopped between benchmark runs: no grace to wait out.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf: Arc<ServerConf> = server.configuration.clone();
    let mut service = pingora_proxy::http_proxy_service(
        &conf,
        Forward {
            backend: backend.clone(),
        },
    );
    if let Some(proxy) = service.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        proxy.server_options = Some(options);
    }
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
