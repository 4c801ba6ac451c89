//! The local API server of the Kubernetes-mode tests as a process of its own, so that tools
//! outside Rust (the conformance runner's `--kube` mode) can run the real binary against it.
//!
//! Run as a test it does nothing. With `PORTCULLIS_APISERVER_URL_FILE` set it starts the server
//! on a free loopback port, writes its URL into that file and serves until killed or until its
//! standard input closes:
//!
//! ```sh
//! PORTCULLIS_APISERVER_URL_FILE=/tmp/url cargo test --test kube_apiserver_main
//! ```

// Most helpers of the shared harness are for the Rust tests.
#[allow(dead_code)]
mod support;

use tokio::io::AsyncReadExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(url_file) = std::env::var_os("PORTCULLIS_APISERVER_URL_FILE") else {
        eprintln!("kube_apiserver_main: PORTCULLIS_APISERVER_URL_FILE is not set; nothing to do");
        return;
    };
    let server = support::apiserver::ApiServer::start().await;
    let tmp = std::path::PathBuf::from(&url_file).with_extension("tmp");
    std::fs::write(&tmp, server.url()).expect("write the URL file");
    std::fs::rename(&tmp, &url_file).expect("publish the URL file");
    // Serve until whoever started us closes our standard input (or kills us).
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 256];
    while matches!(stdin.read(&mut buffer).await, Ok(n) if n > 0) {}
    drop(server);
}
