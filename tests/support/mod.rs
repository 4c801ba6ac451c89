//! Harness for end-to-end tests of Kubernetes mode: the fake API server, the real `portcullis`
//! binary pointed at it through a kubeconfig, echo backends, and waits bounded by deadlines.
//! Everything listens on loopback, on ports picked below the kernel's ephemeral range.

pub(crate) mod apiserver;
pub(crate) mod rbac;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use apiserver::ApiServer;

#[path = "../common/ports.rs"]
mod ports;
pub(crate) use ports::free_port_on as free_port;

/// A loopback address of its own for one test, so that tests running side by side (and other
/// test binaries) never contend for a listener address.
pub(crate) fn loopback(third: u8) -> IpAddr {
    IpAddr::from([127, 0, third, 1 + (std::process::id() % 250) as u8])
}

/// A child process, killed when dropped; its stderr goes to a file shown when a test fails.
pub(crate) struct Process {
    child: Option<Child>,
    log: PathBuf,
    name: String,
}

impl Process {
    fn spawn(
        name: &str,
        args: &[String],
        envs: &[(&str, String)],
        dir: &std::path::Path,
    ) -> Process {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("create a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_IP")
            .env_remove("PORTCULLIS_GATEWAY_SERVICE")
            .env_remove("PORTCULLIS_GATEWAY")
            .env_remove("PORTCULLIS_CONFIG_DIR")
            .env("PORTCULLIS_LOG", "info,portcullis::controller=debug");
        for (k, v) in envs {
            command.env(k, v);
        }
        Process {
            child: Some(command.spawn().expect("the portcullis binary starts")),
            log,
            name: name.to_string(),
        }
    }

    /// Kills the process at once (SIGKILL): no graceful shutdown, no lease release.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (at most `timeout`) for a clean exit; true if it exited 0.
    /// Sends SIGTERM and returns at once, while the process drains.
    pub(crate) fn signal_terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    pub(crate) fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// The process's whole log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The end of the process's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(120)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        // PORTCULLIS_TEST_LOGS=1 shows the logs of passing tests too.
        if std::thread::panicking() || std::env::var_os("PORTCULLIS_TEST_LOGS").is_some() {
            eprintln!(
                "---- {} log (last lines) ----\n{}",
                self.name,
                self.log_tail()
            );
        }
    }
}

/// An echo backend on a free loopback port.
pub(crate) struct Echo {
    _process: Process,
    _dir: tempfile::TempDir,
    pub(crate) port: u16,
}

impl Echo {
    pub(crate) fn start(name: &str) -> Echo {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(IpAddr::from([127, 0, 0, 1]));
        let process = Process::spawn(
            &format!("echo-{name}"),
            &[
                "echo".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--name".into(),
                name.into(),
            ],
            &[],
            dir.path(),
        );
        Echo {
            _process: process,
            _dir: dir,
            port,
        }
    }
}

/// A `portcullis run` in Kubernetes mode, talking to the fake API server.
pub(crate) struct Gateway {
    pub(crate) process: Process,
    _dir: tempfile::TempDir,
    /// The admin endpoint.
    pub(crate) admin: SocketAddr,
    /// Where listener port 80 of the Gateway is served.
    pub(crate) http: SocketAddr,
}

impl Gateway {
    /// Starts the binary with a kubeconfig for `server` whose user's bearer token is `token`
    /// (so that the server's request log tells replicas apart), serving Gateways on `address`.
    pub(crate) fn start(
        server: &ApiServer,
        name: &str,
        address: IpAddr,
        extra: &[&str],
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: test, cluster: {{server: \"{}\"}}}}]\n\
                 users: [{{name: {name}, user: {{token: {name}}}}}]\n\
                 contexts: [{{name: test, context: {{cluster: test, user: {name}, namespace: portcullis-system}}}}]\n\
                 current-context: test\n",
                server.url()
            ),
        )
        .unwrap();
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let admin = SocketAddr::new(loopback, free_port(loopback));
        let http = SocketAddr::new(address, free_port(address));
        let mut args: Vec<String> = vec![
            "run".into(),
            "--admin-addr".into(),
            admin.to_string(),
            "--address-pool".into(),
            address.to_string(),
            "--port-offset".into(),
            (i32::from(http.port()) - 80).to_string(),
            "--access-log-sample".into(),
            "0".into(),
        ];
        // A short drain, unless the test sets its own.
        if !extra.contains(&"--drain-timeout") {
            args.extend(["--drain-timeout".into(), "1s".into()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let process = Process::spawn(
            &format!("gateway-{name}"),
            &args,
            &[("KUBECONFIG", kubeconfig.display().to_string())],
            dir.path(),
        );
        Gateway {
            process,
            _dir: dir,
            admin,
            http,
        }
    }

    /// GET `path` with `Host: host` through the gateway: status and body, or `None` when the
    /// connection fails.
    pub(crate) async fn get(
        &self,
        client: &reqwest::Client,
        host: &str,
        path: &str,
    ) -> Option<(u16, String)> {
        let response = client
            .get(format!("http://{}{path}", self.http))
            .header("host", host)
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Which echo backend answered, if one did with 200.
    pub(crate) async fn backend(
        &self,
        client: &reqwest::Client,
        host: &str,
        path: &str,
    ) -> Option<String> {
        let (status, body) = self.get(client, host, path).await?;
        if status != 200 {
            return None;
        }
        let body: Value = serde_json::from_str(&body).ok()?;
        body["backend"].as_str().map(str::to_string)
    }

    /// The admin endpoint's `/readyz` status code.
    pub(crate) async fn readyz(&self, client: &reqwest::Client) -> Option<u16> {
        self.admin_status(client, "/readyz").await
    }

    /// The status code of an admin endpoint path, `None` while nothing answers.
    pub(crate) async fn admin_status(&self, client: &reqwest::Client, path: &str) -> Option<u16> {
        let response = client
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    }

    /// A sample of the admin endpoint's `/metrics` without labels (`portcullis_leader`),
    /// `None` while nothing answers.
    pub(crate) async fn metric(&self, client: &reqwest::Client, name: &str) -> Option<f64> {
        metric(client, self.admin, name).await
    }
}

/// A sample without labels (`portcullis_leader`) of the `/metrics` of the admin endpoint on
/// `admin`, `None` while nothing answers.
pub(crate) async fn metric(client: &reqwest::Client, admin: SocketAddr, name: &str) -> Option<f64> {
    let text = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// A client for tests: short timeouts, no proxy from the environment.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Polls `probe` every 50 ms until it returns `Some`, failing the test with `what` after
/// `timeout`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The condition of `type_` in a `conditions` array.
pub(crate) fn condition<'a>(conditions: &'a Value, type_: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == type_)
}
