//! Harness for the TLS tests: certificates made with the `openssl` command line tool, the real
//! `portcullis` binary serving a directory of manifests, and the clients that talk to it
//! (`curl`, `openssl s_client`, and a rustls client for tight loops of new connections).
//! Everything listens on loopback, on ports the kernel picks; every wait has a deadline.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::common::free_port;
use crate::common::manifests::{backend, gateway, gateway_class, http_route};

/// The namespace of the Gateway, its route and its backend.
pub(crate) const NAMESPACE: &str = "tls";

/// How long any one client command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Fails the test, with the package to install, unless `openssl` and `curl` are on the PATH.
/// CI installs both (scripts/install-deps); a test that skipped silently would hide that.
pub(crate) fn require_tools() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        for (tool, arg, package) in [
            ("openssl", "version", "openssl"),
            ("curl", "--version", "curl"),
        ] {
            match Command::new(tool).arg(arg).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => return Err(format!("`{tool} {arg}` failed: {}", out.status)),
                Err(err) => {
                    return Err(format!(
                        "the TLS tests need the `{tool}` command (Debian package `{package}`), \
                         which cannot be run: {err}; scripts/install-deps installs it"
                    ))
                }
            }
        }
        Ok(())
    });
    if let Err(message) = checked {
        panic!("{message}");
    }
}

/// Runs `command` to completion, with `input` on its stdin, killing it after `timeout`.
pub(crate) fn run(mut command: Command, input: &[u8], timeout: Duration) -> Output {
    let what = format!("{command:?}");
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("wait for a child process") {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {timeout:?}");
            }
        }
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn openssl(args: &[&str], input: &[u8]) -> Output {
    let mut command = Command::new("openssl");
    command.args(args);
    let out = run(command, input, COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// The key types a certificate can be made with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyType {
    Rsa2048,
    EcdsaP256,
    EcdsaP384,
    /// Not supported by the gateway's signer (ring has no P-521 signing).
    EcdsaP521,
    Ed25519,
}

impl KeyType {
    fn newkey_args(self) -> &'static [&'static str] {
        match self {
            KeyType::Rsa2048 => &["-newkey", "rsa:2048"],
            KeyType::EcdsaP256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyType::EcdsaP384 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            KeyType::EcdsaP521 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
            KeyType::Ed25519 => &["-newkey", "ed25519"],
        }
    }
}

/// A certificate and its private key, as files and as PEM text.
#[derive(Debug, Clone)]
pub(crate) struct Certificate {
    pub(crate) cert_path: PathBuf,
    pub(crate) key_path: PathBuf,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) der: Vec<u8>,
    pub(crate) serial: String,
    /// SHA-256 of the DER, as `AB:CD:...`.
    pub(crate) fingerprint: String,
}

impl Certificate {
    /// The certificate and key that openssl wrote to these files.
    fn read(cert_path: PathBuf, key_path: PathBuf) -> Certificate {
        let cert_pem = std::fs::read_to_string(&cert_path).unwrap();
        let key_pem = std::fs::read_to_string(&key_path).unwrap();
        let der = openssl(&["x509", "-outform", "DER"], cert_pem.as_bytes()).stdout;
        let (serial, fingerprint) = serial_and_fingerprint(&cert_pem);
        Certificate {
            cert_path,
            key_path,
            cert_pem,
            key_pem,
            der,
            serial,
            fingerprint,
        }
    }
}

/// The `openssl req` configuration: no prompts, and one extension section per kind of
/// certificate, so that the result does not depend on the system's openssl.cnf.
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[self_signed]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
";

/// Makes certificates with `openssl req -x509` in a directory of its own.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("openssl.cnf");
        std::fs::write(&config, OPENSSL_CONFIG).unwrap();
        Pki { dir, config }
    }

    /// A self-signed certificate for `dns_names`, as `openssl req -x509` makes by default
    /// (a CA certificate that is its own trust anchor).
    pub(crate) fn self_signed(&self, name: &str, key: KeyType, dns_names: &[&str]) -> Certificate {
        self.make(name, key, "self_signed", dns_names, None)
    }

    /// A self-signed ECDSA certificate for `dns_name` that was valid through 2020 only, made
    /// with `openssl ca`, the one command of openssl 3.0 that takes dates in the past.
    pub(crate) fn expired(&self, name: &str, dns_name: &str) -> Certificate {
        let dir = self.dir.path().join(format!("{name}-ca"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "01\n").unwrap();
        let config = dir.join("ca.cnf");
        std::fs::write(
            &config,
            format!(
                "[ca]\ndefault_ca = own\n[own]\ndatabase = {0}/index.txt\nserial = {0}/serial\n\
                 new_certs_dir = {0}\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
                 copy_extensions = copy\n[any]\ncommonName = supplied\n",
                dir.display()
            ),
        )
        .unwrap();
        let cert_path = self.dir.path().join(format!("{name}.crt"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        let csr = dir.join("request.csr");
        let san = format!("subjectAltName=DNS:{dns_name}");
        let subject = format!("/CN={name}");
        openssl(
            &[
                "req",
                "-new",
                "-config",
                self.config.to_str().unwrap(),
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-noenc",
                "-keyout",
                key_path.to_str().unwrap(),
                "-out",
                csr.to_str().unwrap(),
                "-subj",
                &subject,
                "-addext",
                &san,
            ],
            b"",
        );
        openssl(
            &[
                "ca",
                "-batch",
                "-config",
                config.to_str().unwrap(),
                "-selfsign",
                "-keyfile",
                key_path.to_str().unwrap(),
                "-in",
                csr.to_str().unwrap(),
                "-out",
                cert_path.to_str().unwrap(),
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20210101000000Z",
                "-notext",
            ],
            b"",
        );
        Certificate::read(cert_path, key_path)
    }

    /// A CA certificate, self-signed when `issuer` is `None`, else an intermediate.
    pub(crate) fn ca(&self, name: &str, key: KeyType, issuer: Option<&Certificate>) -> Certificate {
        self.make(name, key, "ca", &[], issuer)
    }

    /// A server certificate for `dns_names` signed by `issuer`.
    pub(crate) fn leaf(
        &self,
        name: &str,
        key: KeyType,
        dns_names: &[&str],
        issuer: &Certificate,
    ) -> Certificate {
        self.make(name, key, "leaf", dns_names, Some(issuer))
    }

    fn make(
        &self,
        name: &str,
        key: KeyType,
        extensions: &str,
        dns_names: &[&str],
        issuer: Option<&Certificate>,
    ) -> Certificate {
        let cert_path = self.dir.path().join(format!("{name}.crt"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        let subject = format!("/CN={name}");
        let san = format!(
            "subjectAltName={}",
            dns_names
                .iter()
                .map(|n| match n.parse::<IpAddr>() {
                    Ok(_) => format!("IP:{n}"),
                    Err(_) => format!("DNS:{n}"),
                })
                .collect::<Vec<_>>()
                .join(",")
        );
        let (config, cert, keyfile) = (
            self.config.to_str().unwrap(),
            cert_path.to_str().unwrap(),
            key_path.to_str().unwrap(),
        );
        let mut args = vec!["req", "-x509", "-config", config, "-extensions", extensions];
        args.extend(key.newkey_args());
        args.extend([
            "-noenc", "-keyout", keyfile, "-out", cert, "-days", "2", "-subj", &subject,
        ]);
        if !dns_names.is_empty() {
            args.extend(["-addext", &san]);
        }
        let issuer_paths;
        if let Some(issuer) = issuer {
            issuer_paths = (
                issuer.cert_path.to_str().unwrap().to_string(),
                issuer.key_path.to_str().unwrap().to_string(),
            );
            args.extend(["-CA", &issuer_paths.0, "-CAkey", &issuer_paths.1]);
        }
        openssl(&args, b"");
        Certificate::read(cert_path, key_path)
    }

    /// The key of `cert` in its algorithm's traditional PEM form (`RSA PRIVATE KEY` for RSA,
    /// `EC PRIVATE KEY` for ECDSA) rather than PKCS#8, as many tools still write it.
    pub(crate) fn traditional_key(&self, cert: &Certificate) -> String {
        let out = openssl(&["pkey", "-traditional"], cert.key_pem.as_bytes()).stdout;
        String::from_utf8(out).unwrap()
    }
}

/// The serial number and SHA-256 fingerprint of a PEM certificate, as `openssl x509` prints them.
pub(crate) fn serial_and_fingerprint(cert_pem: &str) -> (String, String) {
    let out = openssl(
        &["x509", "-noout", "-serial", "-fingerprint", "-sha256"],
        cert_pem.as_bytes(),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |marker: &str| {
        text.lines()
            .find_map(|l| l.split_once(marker).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {marker} in openssl x509 output: {text}"))
    };
    (field("serial="), field("Fingerprint="))
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

/// A `kubernetes.io/tls` Secret holding `cert_pem` (leaf first) and `key_pem`, base64 encoded
/// in `data` as the API server stores them.
pub(crate) fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> String {
    secret(
        namespace,
        name,
        "kubernetes.io/tls",
        &[
            ("tls.crt", cert_pem.as_bytes()),
            ("tls.key", key_pem.as_bytes()),
        ],
    )
}

/// A Secret of any type with any `data` keys.
pub(crate) fn secret(namespace: &str, name: &str, type_: &str, data: &[(&str, &[u8])]) -> String {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let data: Vec<String> = data
        .iter()
        .map(|(k, v)| format!("  {k}: {}", encode(v)))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         type: {type_}\ndata:\n{}\n",
        data.join("\n")
    )
}

/// One HTTPS listener on port 443 in Terminate mode, for the `listeners:` list of the Gateway.
pub(crate) fn https_listener(name: &str, hostname: Option<&str>, secret: &str) -> String {
    https_listener_ref(name, hostname, secret, None)
}

/// Like [`https_listener`], with the Secret in `secret_namespace`.
pub(crate) fn https_listener_ref(
    name: &str,
    hostname: Option<&str>,
    secret: &str,
    secret_namespace: Option<&str>,
) -> String {
    let hostname = hostname.map_or(String::new(), |h| format!(" hostname: \"{h}\","));
    let namespace = secret_namespace.map_or(String::new(), |n| format!(", namespace: {n}"));
    format!(
        "  - {{name: {name}, port: 443, protocol: HTTPS,{hostname} \
         tls: {{mode: Terminate, certificateRefs: [{{name: {secret}{namespace}}}]}}}}\n"
    )
}

/// The GatewayClass, a route from every listener of Gateway `gw` to Service `echo`, and its
/// endpoint on the echo backend.
fn base_manifests(echo_port: u16) -> String {
    [
        gateway_class(),
        http_route(NAMESPACE, "echo", "gw", &[], "echo"),
        backend(NAMESPACE, "echo", echo_port),
    ]
    .concat()
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child process, killed when dropped; its output goes to a file shown when a test fails.
struct Process {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Process {
    fn spawn(name: &str, args: &[String], dir: &Path) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .env("PORTCULLIS_LOG", "info,portcullis::dataplane=debug")
            .env_remove("PORTCULLIS_CONFIG_DIR")
            .env_remove("PORTCULLIS_ADMIN_ADDR")
            .spawn()
            .expect("the portcullis binary starts");
        Process {
            child,
            log,
            name: name.to_string(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("PORTCULLIS_TEST_LOGS").is_some() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- {} log (last lines) ----\n{}",
                self.name,
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

/// A listener's condition, as `/status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    pub(crate) status: String,
    pub(crate) reason: String,
    pub(crate) message: String,
}

/// An echo backend and a `portcullis run` over a directory holding the GatewayClass, a Gateway
/// `tls/gw` with the listeners a test gives, a route from every listener to the echo, and the
/// test's Secrets. Listener port 443 is served on [`Gateway::https`].
pub(crate) struct Gateway {
    // Field order is drop order: the processes stop before their directories go.
    _gateway: Process,
    _echo: Process,
    config: tempfile::TempDir,
    _logs: tempfile::TempDir,
    pub(crate) admin: SocketAddr,
    pub(crate) https: SocketAddr,
}

impl Gateway {
    /// Starts the echo and the gateway with `listeners` (lines made by [`https_listener`]) and
    /// `files` (name and YAML) in the config directory, and waits for the admin endpoint to be
    /// ready.
    pub(crate) fn start(listeners: &str, files: Vec<(String, String)>) -> Gateway {
        Gateway::start_draining_for(listeners, files, "1s")
    }

    /// As [`Gateway::start`], with a drain timeout of `drain_timeout` rather than 1 s.
    pub(crate) fn start_draining_for(
        listeners: &str,
        files: Vec<(String, String)>,
        drain_timeout: &str,
    ) -> Gateway {
        require_tools();
        let logs = tempfile::tempdir().unwrap();
        let config = tempfile::tempdir().unwrap();
        let echo_port = free_port();
        let echo = Process::spawn(
            "echo",
            &[
                "echo".into(),
                "--listen".into(),
                format!("127.0.0.1:{echo_port}"),
                "--name".into(),
                "echo".into(),
            ],
            logs.path(),
        );
        std::fs::write(config.path().join("base.yaml"), base_manifests(echo_port)).unwrap();
        std::fs::write(
            config.path().join("gateway.yaml"),
            gateway_manifest(listeners),
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(config.path().join(name), text).unwrap();
        }
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let gateway = Process::spawn(
            "gateway",
            &[
                "run".into(),
                "--config-dir".into(),
                config.path().display().to_string(),
                "--admin-addr".into(),
                admin.to_string(),
                "--address-pool".into(),
                "127.0.0.1".into(),
                "--port-offset".into(),
                (i32::from(https.port()) - 443).to_string(),
                "--access-log-sample".into(),
                "0".into(),
                "--drain-timeout".into(),
                drain_timeout.into(),
                "--request-header-timeout".into(),
                "2s".into(),
            ],
            logs.path(),
        );
        let gw = Gateway {
            _gateway: gateway,
            _echo: echo,
            config,
            _logs: logs,
            admin,
            https,
        };
        eventually("the echo backend accepts connections", || {
            TcpStream::connect(("127.0.0.1", echo_port)).ok()
        });
        eventually("the admin endpoint reports ready", || {
            (admin_get(admin, "/readyz")?.0 == 200).then_some(())
        });
        eventually("the Gateway's listeners have status", || {
            let status = gw.gateway_status()?;
            (!status["listeners"].as_array()?.is_empty()).then_some(())
        });
        gw
    }

    /// Writes (or replaces) a file of the config directory in one step, as a rename.
    /// What the gateway has written to stdout and stderr so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self._logs.path().join("gateway.log")).unwrap_or_default()
    }

    /// The admin endpoint's `/metrics` text.
    pub(crate) fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    pub(crate) fn write(&self, name: &str, text: &str) {
        let path = self.config.path().join(name);
        let tmp = self.config.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// The gateway's CPU time so far (user and system), in clock ticks.
    pub(crate) fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self._gateway.child.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// Sends the gateway SIGTERM: it drains (for 1 s, unless started with another drain
    /// timeout) and exits.
    pub(crate) fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self._gateway.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the gateway to exit (after [`Gateway::terminate`]), and says
    /// whether it did.
    pub(crate) fn exits_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self._gateway.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Removes a file of the config directory.
    pub(crate) fn remove(&self, name: &str) {
        std::fs::remove_file(self.config.path().join(name)).unwrap();
    }

    /// The status of Gateway `tls/gw` from `/status`.
    fn gateway_status(&self) -> Option<Value> {
        let (code, body) = admin_get(self.admin, "/status")?;
        if code != 200 {
            return None;
        }
        let report: Value = serde_json::from_str(&body).ok()?;
        report["objects"]
            .as_array()?
            .iter()
            .find(|o| o["kind"] == "Gateway" && o["namespace"] == NAMESPACE && o["name"] == "gw")
            .map(|o| o["status"].clone())
    }

    /// The condition `type_` of listener `listener`, if reported.
    pub(crate) fn condition(&self, listener: &str, type_: &str) -> Option<Condition> {
        let status = self.gateway_status()?;
        let listener = status["listeners"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == listener)?;
        let c = listener["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)?;
        Some(Condition {
            status: c["status"].as_str()?.to_string(),
            reason: c["reason"].as_str()?.to_string(),
            message: c["message"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// Waits until listener `listener` reports condition `type_` with `status` and `reason`.
    pub(crate) fn wait_for_condition(
        &self,
        listener: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Condition {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.condition(listener, type_);
            if let Some(c) = &seen {
                if c.status == status && c.reason == reason {
                    return c.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "listener {listener}: {type_} never became {status}/{reason}; last seen {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a handshake with `sni` is answered with `cert`.
    pub(crate) fn wait_until_served(&self, sni: Option<&str>, cert: &Certificate) {
        eventually(
            &format!("{sni:?} is served with certificate {}", cert.serial),
            || (s_client(self.https, sni, &[]).leaf_der()? == cert.der).then_some(()),
        );
    }
}

fn gateway_manifest(listeners: &str) -> String {
    gateway(NAMESPACE, "gw", listeners)
}

/// Polls `probe` every 50 ms until it returns `Some`, failing the test with `what` after 15 s.
pub(crate) fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET `path` on the admin endpoint with curl: status code and body.
fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "5",
        "-w",
        "\n%{http_code}",
    ]);
    command.arg(format!("http://{admin}{path}"));
    let out = run(command, b"", COMMAND_TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// What curl reported for one request.
#[derive(Debug)]
pub(crate) struct CurlResult {
    pub(crate) exit_ok: bool,
    /// 0 when no response came.
    pub(crate) code: u16,
    /// `1.1` or `2`.
    pub(crate) http_version: String,
    pub(crate) body: String,
    pub(crate) stderr: String,
}

/// `curl https://HOST:PORT/PATH` with HOST resolved to the gateway's listener socket and only
/// `cacert` trusted, plus `extra` arguments.
pub(crate) fn curl_https(
    https: SocketAddr,
    host: &str,
    path: &str,
    cacert: &Path,
    extra: &[&str],
) -> CurlResult {
    let port = https.port();
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--noproxy", "*", "--max-time", "5"])
        .args(["--resolve", &format!("{host}:{port}:{}", https.ip())])
        .arg("--cacert")
        .arg(cacert)
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"));
    curl_result(run(command, b"", COMMAND_TIMEOUT))
}

/// `curl URL` with `extra` arguments, no proxy.
pub(crate) fn curl(url: &str, extra: &[&str]) -> CurlResult {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--noproxy", "*", "--max-time", "5"])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(url);
    curl_result(run(command, b"", COMMAND_TIMEOUT))
}

fn curl_result(out: Output) -> CurlResult {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut fields = last.split_whitespace();
    CurlResult {
        exit_ok: out.status.success(),
        code: fields.next().and_then(|c| c.parse().ok()).unwrap_or(0),
        http_version: fields.next().unwrap_or_default().to_string(),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// What `openssl s_client` reported for one handshake.
#[derive(Debug)]
pub(crate) struct Handshake {
    /// The handshake completed (the certificate is not verified unless asked).
    pub(crate) completed: bool,
    /// stdout and stderr together.
    pub(crate) output: String,
}

impl Handshake {
    /// The PEM certificates the server sent, leaf first (needs `-showcerts` for more than one).
    pub(crate) fn chain_pem(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = self.output.as_str();
        while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
            let end_marker = "-----END CERTIFICATE-----";
            let Some(end) = rest[start..].find(end_marker) else {
                break;
            };
            let end = start + end + end_marker.len();
            out.push(format!("{}\n", &rest[start..end]));
            rest = &rest[end..];
        }
        out
    }

    /// The leaf certificate the server sent, as DER.
    pub(crate) fn leaf_der(&self) -> Option<Vec<u8>> {
        let pem = self.chain_pem().into_iter().next()?;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(body).ok()
    }

    /// The protocol version negotiated, from the `New, TLSv1.3, Cipher is ...` line (the
    /// session block is not printed in TLS 1.3 when no ticket arrived before the exit).
    pub(crate) fn protocol(&self) -> Option<String> {
        self.output.lines().find_map(|l| {
            let rest = l.strip_prefix("New, ")?;
            Some(rest.split(',').next()?.trim().to_string())
        })
    }

    /// A `NAME: value` or `NAME value` line of the report, e.g. `ALPN protocol:`.
    pub(crate) fn field(&self, name: &str) -> Option<String> {
        self.output
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
    }
}

/// `openssl s_client` to `addr`, with SNI `sni` (none when `None`) and `extra` arguments; it
/// sends nothing and closes after the handshake.
pub(crate) fn s_client(addr: SocketAddr, sni: Option<&str>, extra: &[&str]) -> Handshake {
    let mut command = Command::new("openssl");
    command.args(["s_client", "-connect", &addr.to_string()]);
    match sni {
        Some(name) => command.args(["-servername", name]),
        None => command.arg("-noservername"),
    };
    command.args(extra);
    let out = run(command, b"", COMMAND_TIMEOUT);
    let mut output = String::from_utf8_lossy(&out.stdout).to_string();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    // s_client exits 0 after a completed handshake; the cipher line names the cipher only then.
    let completed = out.status.success()
        && output.contains("-----BEGIN CERTIFICATE-----")
        && !output.contains("Cipher is (NONE)");
    Handshake { completed, output }
}

/// A rustls client configuration trusting only `roots`, speaking HTTP/1.1. It never resumes a
/// session: a resumed handshake carries no certificate (the client keeps reporting the one of
/// the original session), and the tests want to see what a full handshake is served.
pub(crate) fn rustls_client(roots: &[&Certificate]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(root.der.clone()))
            .expect("a usable trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// One HTTPS connection made with rustls, kept open for keep-alive requests.
pub(crate) struct RustlsConnection {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    host: String,
}

impl RustlsConnection {
    /// Connects to `addr` and completes the handshake for `host` (the SNI and the name
    /// verified).
    pub(crate) fn open(
        config: &Arc<rustls::ClientConfig>,
        addr: SocketAddr,
        host: &str,
    ) -> Result<RustlsConnection, String> {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("bad server name {host}: {e}"))?;
        let conn = rustls::ClientConnection::new(config.clone(), name)
            .map_err(|e| format!("client connection: {e}"))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = tcp.set_nodelay(true);
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        Ok(RustlsConnection {
            tls,
            host: host.to_string(),
        })
    }

    /// The leaf certificate the server presented, as DER.
    pub(crate) fn leaf_der(&self) -> Vec<u8> {
        self.tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    /// Sends `GET path` and reads the whole response: its status code.
    pub(crate) fn get(&mut self, path: &str, close: bool) -> Result<u16, String> {
        let connection = if close { "close" } else { "keep-alive" };
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: {connection}\r\n\r\n",
            self.host
        );
        self.tls
            .write_all(request.as_bytes())
            .and_then(|_| self.tls.flush())
            .map_err(|e| format!("write: {e}"))?;
        read_response(&mut self.tls)
    }
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body): its status code.
pub(crate) fn read_response(stream: &mut impl Read) -> Result<u16, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut fill = |buf: &mut Vec<u8>| -> Result<bool, String> {
        match stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) => Err(format!("read after {} bytes: {e}", buf.len())),
        }
    };
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(&mut buf)? {
            return Err(format!(
                "connection closed inside the response head ({} bytes)",
                buf.len()
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head:?}"))?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    if let Some(length) = header("content-length:") {
        let length: usize = length
            .parse()
            .map_err(|_| "bad content-length".to_string())?;
        while buf.len() < head_end + length {
            if !fill(&mut buf)? {
                return Err("connection closed inside the body".to_string());
            }
        }
    } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        while !buf[head_end..].ends_with(b"0\r\n\r\n") {
            if !fill(&mut buf)? {
                return Err("connection closed inside the chunked body".to_string());
            }
        }
    } else {
        // Delimited by the end of the connection.
        while fill(&mut buf)? {}
    }
    Ok(code)
}
