//! The gateway under test: one `portcullis run` process for the whole run, its watched
//! configuration directory, and its admin endpoint (`/readyz`, `/status`).
//!
//! Each configuration is written as a single file replaced by rename, so the gateway never reads
//! half of one. The process is killed when the [`Gateway`] is dropped, including on a panic.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::client;
use crate::manifests;

/// Gateways get their own loopback address from this range.
pub(crate) const ADDRESS_POOL: &str = "127.0.10.1-127.0.10.250";
/// Listener port P is served at P + this, so that ports 80 and 443 need no privilege.
pub(crate) const PORT_OFFSET: u16 = 20000;
/// How long the gateway may take to start, and to take in a configuration (it polls its
/// directory every 250 ms and compiles in milliseconds).
const START_TIMEOUT: Duration = Duration::from_secs(30);
const APPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// One object of the `/status` report.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct StatusObject {
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) namespace: String,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) generation: i64,
    #[serde(default)]
    pub(crate) status: Value,
}

/// The `/status` report.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct StatusReport {
    pub(crate) objects: Vec<StatusObject>,
}

impl StatusReport {
    /// The object of that kind and name; `namespace` `None` is a cluster-scoped object.
    pub(crate) fn find(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<&StatusObject> {
        self.objects.iter().find(|o| {
            o.kind == kind && o.name == name && o.namespace == namespace.unwrap_or_default()
        })
    }
}

/// The running gateway.
pub(crate) struct Gateway {
    child: Child,
    admin: SocketAddr,
    config_dir: PathBuf,
    log: PathBuf,
    /// Configurations written so far; the GatewayClass generation mirrors it.
    loads: u64,
}

impl Gateway {
    /// Starts `binary` on an empty configuration directory under `workdir` and waits until it is
    /// ready.
    pub(crate) async fn start(binary: &Path, workdir: &Path) -> Result<Gateway, String> {
        let config_dir = workdir.join("config");
        std::fs::create_dir_all(&config_dir).map_err(|e| e.to_string())?;
        let log = workdir.join("gateway.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let log_file2 = log_file.try_clone().map_err(|e| e.to_string())?;
        let admin = free_port()?;
        let child = Command::new(binary)
            .arg("run")
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--admin-addr")
            .arg(admin.to_string())
            .arg("--address-pool")
            .arg(ADDRESS_POOL)
            .arg("--port-offset")
            .arg(PORT_OFFSET.to_string())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_file2)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut gateway = Gateway {
            child,
            admin,
            config_dir,
            log,
            loads: 0,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            gateway.check_alive()?;
            if let Ok(r) = client::get(admin, "/readyz").await {
                if r.status == 200 {
                    gateway.apply(&[]).await?;
                    return Ok(gateway);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the gateway was not ready within {}s; see {}",
                    START_TIMEOUT.as_secs(),
                    gateway.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An error if the process has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the gateway exited ({status}); see {}",
                self.log.display()
            )),
            Err(e) => Err(format!("cannot check the gateway process: {e}")),
        }
    }

    /// Replaces the configuration with `docs` (plus the GatewayClass) and waits until the
    /// gateway reports having taken it in.
    pub(crate) async fn apply(&mut self, docs: &[Value]) -> Result<(), String> {
        self.loads += 1;
        let load = self.loads;
        let mut all = docs.to_vec();
        all.push(manifests::gateway_class(load));
        let text = manifests::to_yaml(&all)?;
        // The temporary name does not end in .yaml, so the gateway never reads it.
        let tmp = self.config_dir.join(".conformance.yaml.tmp");
        std::fs::write(&tmp, text).map_err(|e| format!("writing the configuration: {e}"))?;
        std::fs::rename(&tmp, self.config_dir.join("conformance.yaml"))
            .map_err(|e| format!("writing the configuration: {e}"))?;
        let deadline = Instant::now() + APPLY_TIMEOUT;
        loop {
            self.check_alive()?;
            if let Ok(report) = self.status().await {
                if let Some(class) = report.find("GatewayClass", None, manifests::GATEWAY_CLASS) {
                    let conditions = class.status["conditions"].as_array();
                    let observed = conditions.is_some_and(|cs| {
                        !cs.is_empty()
                            && cs.iter().all(|c| {
                                c["observedGeneration"].as_u64().is_some_and(|g| g >= load)
                            })
                    });
                    if class.generation >= load as i64 && observed {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the gateway did not take in configuration {load} within {}s (its GatewayClass \
                     never reported generation {load}); see {}",
                    APPLY_TIMEOUT.as_secs(),
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The current `/status` report.
    pub(crate) async fn status(&self) -> Result<StatusReport, String> {
        let reply = client::get(self.admin, "/status").await?;
        if reply.status != 200 {
            return Err(format!("/status answered {}", reply.status));
        }
        serde_json::from_slice(&reply.body).map_err(|e| format!("/status is not a report: {e}"))
    }

    /// Stops the process and waits for it.
    pub(crate) async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    listener.local_addr().map_err(|e| e.to_string())
}
