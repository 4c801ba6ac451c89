//! Bad input never crashes the gateway or blanks its table: each kind of mistake gets a clear
//! error or status condition, and the last good configuration keeps serving.

mod common;

use common::manifests::{endpoint_slice, gateway, gateway_class, http_route, listener, service};
use common::{admin_text, free_port, run_gateway, Killed};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn portcullis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

/// A Gateway with an HTTP listener and a route to Service `svc`, whose endpoints are in a file
/// of their own ([`endpoints`]).
fn good() -> String {
    [
        gateway_class(),
        gateway("app", "gw", &listener("http", 80, "HTTP")),
        http_route("app", "good", "gw", &[], "svc"),
        service("app", "svc"),
    ]
    .concat()
}

fn endpoints(port: u16) -> String {
    endpoint_slice("app", "svc", port)
}

/// Every kind of mistake in one directory, beside a good configuration.
const BAD: &[(&str, &str)] = &[
    ("malformed.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n"),
    (
        "unknown-kind.yaml",
        "apiVersion: v1\nkind: Servise\nmetadata: {name: w, namespace: app}\n",
    ),
    (
        "bad-regex.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: regex, namespace: app}\n\
         spec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: '/(['}}]\n    \
         backendRefs: [{name: svc, port: 80}]\n",
    ),
    (
        "duplicate-listener.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: dup, namespace: app}\n\
         spec:\n  gatewayClassName: portcullis\n  listeners:\n  - {name: a, port: 8080, protocol: HTTP}\n  \
         - {name: b, port: 8080, protocol: HTTP}\n",
    ),
    (
        "missing-refs.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: missing, namespace: app}\n\
         spec:\n  parentRefs: [{name: gw}]\n  hostnames: [missing.example]\n  \
         rules: [{backendRefs: [{name: nowhere, port: 80}]}]\n",
    ),
];

#[test]
fn check_reports_every_mistake_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.yaml"), good()).unwrap();
    std::fs::write(dir.path().join("endpoints.yaml"), endpoints(9)).unwrap();
    for (name, text) in BAD {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    // Latin-1, not UTF-8: refused whole, as a file with a document that does not parse is.
    std::fs::write(
        dir.path().join("latin1.yaml"),
        b"apiVersion: v1\nkind: Service\nmetadata: {name: caf\xe9, namespace: app}\n",
    )
    .unwrap();
    let out = portcullis().arg("check").arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "malformed.yaml: YAML syntax error at line",
        "malformed.yaml is loaded: a file is taken whole or not at all",
        "latin1.yaml: file is not UTF-8 text",
        "latin1.yaml is loaded: a file is taken whole or not at all",
        "unsupported kind Servise (v1); did you mean Service?",
        "invalid regular expression",
        "spec.listeners[1] has the port, protocol and hostname of an earlier listener",
        "BackendNotFound",
    ] {
        assert!(
            stdout.contains(expected) || stderr.contains(expected),
            "missing {expected:?} in:\n{stdout}\n{stderr}"
        );
    }
    // The regex crate's multi-line diagram is folded into one line that says what is wrong.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("invalid regular expression") && l.contains("unclosed")),
        "the regex problem is not on one line:\n{stdout}"
    );
    let json = portcullis()
        .arg("check")
        .arg("--json")
        .arg(dir.path())
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("--json prints JSON");
    assert!(report["objects"].as_array().is_some_and(|o| !o.is_empty()));
}

/// A manifest that cannot be read as a file (a symlink to nothing) is a problem `check`
/// reports and fails on; a reader that stops early (`check | head -1`) ends the report without
/// a panic, and the exit status still says what was found.
#[test]
fn check_fails_on_a_dangling_manifest_link_and_survives_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.yaml"), good()).unwrap();
    std::fs::write(dir.path().join("endpoints.yaml"), endpoints(9)).unwrap();
    // Enough routes for a report larger than a pipe holds: `check` is still writing when the
    // reader goes.
    let routes: String = (0..1000)
        .map(|i| http_route("app", &format!("r{i}"), "gw", &[], "svc"))
        .collect();
    std::fs::write(dir.path().join("more.yaml"), routes).unwrap();
    let out = portcullis().arg("check").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.len() > 128 * 1024, "{}", out.stdout.len());
    std::os::unix::fs::symlink("moved.yaml", dir.path().join("routes.yaml")).unwrap();
    let mut check = portcullis()
        .arg("check")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first line only, then close the pipe.
    let mut first = String::new();
    BufReader::new(check.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        first.contains("routes.yaml: symlink to nothing"),
        "{first}\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_names_what_nothing_serves_and_fails_when_that_is_everything() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("endpoints.yaml"), endpoints(9)).unwrap();
    // A misspelt controller name: the class, its Gateway and its routes are all left alone.
    let misspelt = good().replace(
        "portcullis.dev/gateway-controller",
        "portcullis.dev/gateway-controler",
    );
    assert_ne!(misspelt, good(), "the example names the controller");
    std::fs::write(dir.path().join("good.yaml"), misspelt).unwrap();
    let out = portcullis().arg("check").arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("NOT SERVED GatewayClass"), "{stdout}");
    assert!(
        stderr.contains("nothing under") && stderr.contains("no GatewayClass there names"),
        "{stderr}"
    );
    // A class in a file that is refused is not denied: the refusal is why nothing is served.
    let refused = good().replace("protocol: HTTP", "protocol: HTTP, port: eighty");
    assert_ne!(refused, good(), "the example has an HTTP listener");
    std::fs::write(dir.path().join("good.yaml"), refused).unwrap();
    let out = portcullis().arg("check").arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no GatewayClass that loaded names controller")
            && stderr.contains("a class in a refused file is not read"),
        "{stderr}"
    );
}

/// `check --json` answers in JSON on stdout even when it cannot start: a reader of its output
/// got nothing for an empty or missing directory.
#[test]
fn check_json_says_why_it_cannot_start_in_json() {
    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("missing");
    for (dir, code) in [(empty.path(), 1), (missing.as_path(), 2)] {
        let out = portcullis()
            .args(["check", "--json"])
            .arg(dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code));
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(&dir.display().to_string()), "{answer}");
    }
}

/// `--gateway` scopes a process to one Gateway: one that is not in the directory leaves
/// nothing served, which `check` fails on (it passed on the class alone, accepted), and a
/// value that is no namespace/name is refused before anything runs.
#[test]
fn check_fails_when_the_gateway_it_is_scoped_to_is_not_there() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("endpoints.yaml"), endpoints(9)).unwrap();
    std::fs::write(dir.path().join("good.yaml"), good()).unwrap();
    let scoped = |gateway: &str| {
        let out = portcullis()
            .arg("check")
            .arg(dir.path())
            .args(["--gateway", gateway])
            .output()
            .unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = scoped("app/gw");
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = scoped("app/nope");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(
            "NOT SERVED Gateway app/nope, the one --gateway names, is not in the \
             configuration (there are app/gw)"
        ),
        "{text}"
    );
    assert!(
        text.contains("--gateway app/nope names no Gateway served"),
        "{text}"
    );
    // The same in JSON, for a reader of stdout alone.
    let out = portcullis()
        .args(["check", "--json"])
        .arg(dir.path())
        .args(["--gateway", "app/nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("--gateway app/nope names no Gateway"),
        "{answer}"
    );
    let not_served = answer["notServed"][0].as_str().unwrap_or_default();
    assert!(not_served.contains("app/nope"), "{answer}");
    let long = format!("{}/gw", "a".repeat(64));
    for malformed in [
        "nope", "app/", "/gw", "App/gw", "a/b/c", "app/a..b", "a.b/gw", &long,
    ] {
        let (code, text) = scoped(malformed);
        assert_eq!(code, Some(2), "{malformed}: {text}");
        assert!(text.contains("is not a Gateway's namespace/name"), "{text}");
    }
}

/// Offline, a directory is read once: a file that does not parse never held objects, so the
/// commands must report its error without claiming that earlier objects are kept.
#[test]
fn offline_commands_do_not_claim_to_keep_objects_of_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.yaml"), good()).unwrap();
    std::fs::write(dir.path().join("malformed.yaml"), BAD[0].1).unwrap();
    let check = portcullis().arg("check").arg(dir.path()).output().unwrap();
    let explain = portcullis()
        .args(["explain", "--config-dir"])
        .arg(dir.path())
        .args(["--listener", "app/gw/http", "--host", "a.example"])
        .output()
        .unwrap();
    for (command, out) in [("check", check), ("explain", explain)] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.contains("malformed.yaml") || stderr.contains("malformed.yaml"),
            "{command} does not report the broken file:\n{stdout}\n{stderr}"
        );
        assert!(
            !stderr.contains("previous objects") && !stderr.contains("held before"),
            "{command} claims to keep objects it never loaded:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_good_table_keeps_serving_through_bad_edits() {
    let dir = tempfile::tempdir().unwrap();
    let echo_port = free_port();
    let _echo = Killed(
        portcullis()
            .args([
                "echo",
                "--listen",
                &format!("127.0.0.1:{echo_port}"),
                "--name",
                "svc",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::write(dir.path().join("good.yaml"), good()).unwrap();
    std::fs::write(dir.path().join("endpoints.yaml"), endpoints(echo_port)).unwrap();
    let (_gw, listen, admin) = run_gateway(dir.path(), &[]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{listen}/");
    let wait_for = |want: u16| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(r) = client.get(&url).send().await {
                    if r.status() == want {
                        return;
                    }
                }
                assert!(Instant::now() < deadline, "never got {want}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(200).await;

    // Break the good file itself: its objects must stay, and the error must be reported.
    std::fs::write(dir.path().join("good.yaml"), "kind: [this is not yaml").unwrap();
    for (name, text) in BAD {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let status_url = format!("http://127.0.0.1:{admin}/status");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = client
            .get(&status_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let report: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
        let errors = report["errors"].to_string();
        if errors.contains("good.yaml") && errors.contains("Servise") {
            break;
        }
        assert!(Instant::now() < deadline, "errors not reported: {errors}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        let r = client.get(&url).send().await.expect("gateway still up");
        assert_eq!(r.status(), 200, "the last good route stopped serving");
    }
    // A route to a missing Service answers 500 for its share, as the spec asks.
    let r = client
        .get(&url)
        .header("host", "missing.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let health = client
        .get(format!("http://127.0.0.1:{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// A gateway run on a config directory, with an echo backend for Service `app/svc`: the base
/// file holds the GatewayClass, a Gateway `app/gw` with an HTTP listener, and the Service.
struct Running {
    dir: tempfile::TempDir,
    client: reqwest::Client,
    listen: u16,
    admin: u16,
    _echo: Killed,
    _gateway: Killed,
}

impl Running {
    async fn start(files: &[(&str, String)]) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let echo_port = free_port();
        let echo = Killed(
            portcullis()
                .args(["echo", "--listen", &format!("127.0.0.1:{echo_port}")])
                .args(["--name", "svc"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let base = [
            gateway_class(),
            gateway("app", "gw", &listener("http", 80, "HTTP")),
            service("app", "svc"),
        ]
        .concat();
        std::fs::write(dir.path().join("base.yaml"), base).unwrap();
        std::fs::write(dir.path().join("endpoints.yaml"), endpoints(echo_port)).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let (gateway, listen, admin) = run_gateway(dir.path(), &[]);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Running {
            dir,
            client,
            listen,
            admin,
            _echo: echo,
            _gateway: gateway,
        }
    }

    fn write(&self, name: &str, text: impl AsRef<[u8]>) {
        std::fs::write(self.dir.path().join(name), text).unwrap();
    }

    /// The status a request for `host` gets, or 0 when the gateway does not answer.
    async fn status_of(&self, host: &str) -> u16 {
        let url = format!("http://127.0.0.1:{}/", self.listen);
        match self.client.get(url).header("host", host).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Waits (bounded) until a request for `host` gets `want`.
    async fn wait_for(&self, host: &str, want: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.status_of(host).await != want {
            assert!(Instant::now() < deadline, "{host} never got {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/status` errors as JSON text.
    async fn errors(&self) -> String {
        let body = admin_text(&self.client, self.admin, "/status").await;
        let report: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
        report["errors"].to_string()
    }

    /// Waits (bounded) until the `/status` errors satisfy `done`, and returns them.
    async fn wait_for_errors(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let errors = self.errors().await;
            if done(&errors) {
                return errors;
            }
            assert!(
                Instant::now() < deadline,
                "errors never as expected: {errors}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of the `portcullis_config_problems` gauge.
    async fn config_problems(&self) -> String {
        let body = admin_text(&self.client, self.admin, "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix("portcullis_config_problems "))
            .unwrap_or("absent")
            .to_string()
    }
}

/// Routes `a` and `b` of namespace `app`, for hosts a.example and b.example.
fn two_routes() -> String {
    http_route("app", "a", "gw", &["a.example"], "svc")
        + &http_route("app", "b", "gw", &["b.example"], "svc")
}

/// A bad document or a wrongly typed field in a file of several objects keeps the whole file at
/// its last good content, and the error leaves (with the problem gauge) once it is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_document_keeps_every_object_of_its_file_serving() {
    let gw = Running::start(&[("routes.yaml", two_routes())]).await;
    gw.wait_for("a.example", 200).await;
    gw.wait_for("b.example", 200).await;

    let edits = [
        (
            two_routes().replace(
                "kind: HTTPRoute\nmetadata: {name: b",
                "kind: HTTPRoutes\nmetadata: {name: b",
            ),
            "unsupported kind HTTPRoutes",
        ),
        (
            two_routes().replace("name: b,", "name: [b],"),
            "metadata.name is not a string",
        ),
        (
            two_routes().replace("port: 80}]}]\n---", "port: eighty}]}]\n---"),
            // (the errors are matched as JSON text, where quotes are escaped)
            "has a value of the wrong type: spec.rules[0].backendRefs[0].port: invalid type: \
             the string",
        ),
    ];
    for (text, expected) in edits {
        assert_ne!(text, two_routes(), "the edit applies");
        gw.write("routes.yaml", &text);
        let errors = gw
            .wait_for_errors(|e| e.contains("routes.yaml") && e.contains(expected))
            .await;
        assert!(errors.contains("(line "), "{errors}");
        assert!(!errors.contains("syntax"), "{errors}");
        for _ in 0..10 {
            assert_eq!(gw.status_of("a.example").await, 200, "after {expected}");
            assert_eq!(gw.status_of("b.example").await, 200, "after {expected}");
        }
    }

    // A Service port that is a string, in the file the routes depend on.
    let base = std::fs::read_to_string(gw.dir.path().join("base.yaml")).unwrap();
    gw.write("base.yaml", base.replace("port: 80}", "port: '80'}"));
    gw.wait_for_errors(|e| e.contains("base.yaml")).await;
    assert_eq!(gw.status_of("a.example").await, 200);

    // Fixed, and a file that is not UTF-8 comes and goes: every error leaves with its cause.
    gw.write("base.yaml", base);
    gw.write("routes.yaml", two_routes());
    gw.write("latin1.yaml", b"# caf\xe9\n");
    gw.wait_for_errors(|e| e.contains("latin1.yaml") && !e.contains("routes.yaml"))
        .await;
    std::fs::remove_file(gw.dir.path().join("latin1.yaml")).unwrap();
    gw.wait_for_errors(|e| e == "[]").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.config_problems().await != "0" {
        assert!(
            Instant::now() < deadline,
            "portcullis_config_problems stays up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.status_of("b.example").await, 200);
}

/// A writer that pauses halfway through a file, keeping it open, does not get its first half
/// served: the objects of the second half keep answering until the file is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_not_read_while_it_is_being_written() {
    use std::io::Write;
    let gw = Running::start(&[("routes.yaml", two_routes())]).await;
    gw.wait_for("b.example", 200).await;

    let path = gw.dir.path().join("routes.yaml");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(http_route("app", "a", "gw", &["a.example"], "svc").as_bytes())
        .unwrap();
    file.flush().unwrap();
    // Longer than a scan interval, and than the quiet time a change without events waits.
    let pause = Instant::now() + Duration::from_millis(900);
    let mut answers = 0;
    while Instant::now() < pause {
        assert_eq!(
            gw.status_of("b.example").await,
            200,
            "the half file was served"
        );
        answers += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answers > 5);
    file.write_all(http_route("app", "b", "gw", &["b.example"], "svc").as_bytes())
        .unwrap();
    drop(file);
    for _ in 0..20 {
        assert_eq!(gw.status_of("b.example").await, 200);
        assert_eq!(gw.status_of("a.example").await, 200);
    }
}

#[test]
fn an_unreadable_subdirectory_is_reported_and_the_rest_is_read() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    mode(dir.path(), 0o755);
    std::fs::write(dir.path().join("good.yaml"), good()).unwrap();
    std::fs::write(dir.path().join("endpoints.yaml"), endpoints(9)).unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("more.yaml"), service("app", "more")).unwrap();
    mode(&sub, 0o000);
    // Root lists a directory whatever its mode, so as root the check runs as nobody.
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let mut check = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_portcullis"));
        c
    } else {
        portcullis()
    };
    let out = check.arg("check").arg(dir.path()).output().unwrap();
    mode(&sub, 0o755);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!("{}: cannot read directory", sub.display())),
        "the subdirectory is not named:\n{all}"
    );
    // The rest of the tree was read: the route beside the subdirectory is accepted.
    assert!(
        all.lines()
            .skip_while(|l| !l.contains("HTTPRoute app/good"))
            .take(4)
            .any(|l| l.contains("Accepted=True")),
        "the route beside it was not read:\n{all}"
    );
}

/// A listener whose port another process holds: the gateway is not ready until it can listen
/// there (a rollout waits), its listener and Gateway say why, and it binds once the port is
/// free. A port taken later, by a listener added to a running gateway, leaves the gateway ready
/// and every other listener serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_port_taken_by_another_process_is_reported_and_retried() {
    use common::wait_ready;
    let dir = tempfile::tempdir().unwrap();
    let echo_port = free_port();
    let _echo = Killed(
        portcullis()
            .args(["echo", "--listen", &format!("127.0.0.1:{echo_port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The ports that listeners 80 and 81 are mapped onto, held here until released.
    let mut first = Some(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let mut second = Some(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let port = |l: &Option<std::net::TcpListener>| l.as_ref().unwrap().local_addr().unwrap().port();
    let (first_port, second_port) = (port(&first), port(&second));
    std::fs::write(dir.path().join("good.yaml"), good()).unwrap();
    std::fs::write(dir.path().join("endpoints.yaml"), endpoints(echo_port)).unwrap();
    let map = format!("80={first_port},81={second_port}");
    let (_gw, _, admin) = run_gateway(dir.path(), &["--port-map", &map]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://127.0.0.1:{admin}{path}"))
                .send()
                .await
                .ok()?;
            Some((r.status().as_u16(), r.text().await.ok()?))
        }
    };
    // The Gateway's condition `Programmed`, and listener `listener`'s, as (status, reason,
    // message) triples.
    let programmed = |listener: &'static str| async move {
        let (_, body) = get("/status").await?;
        let report: serde_json::Value = serde_json::from_str(&body).ok()?;
        let gw = report["objects"]
            .as_array()?
            .iter()
            .find(|o| o["kind"] == "Gateway" && o["name"] == "gw")?
            .clone();
        let of = |conditions: &serde_json::Value| {
            let c = conditions
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Programmed")?;
            Some(format!("{} {} {}", c["status"], c["reason"], c["message"]))
        };
        let l = gw["status"]["listeners"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == listener)?
            .clone();
        Some((of(&gw["status"]["conditions"])?, of(&l["conditions"])?))
    };
    // The value of metric `name` (without labels) in `metrics`.
    let gauge = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(str::to_string)
    };
    let unbound = |metrics: &str| gauge(metrics, "portcullis_listener_sockets_unbound");
    // The status of a request through listener http's socket.
    let through_http = || async {
        client
            .get(format!("http://127.0.0.1:{first_port}/"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok()
    };

    // While the port is held: unready, saying which socket, with both conditions pending.
    let taken = format!("cannot listen on 127.0.0.1:{first_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let (Some((503, ready)), Some((gw, l))) =
            (get("/readyz").await, programmed("http").await)
        {
            if ready.contains(&taken) && gw.contains("Pending") {
                assert!(gw.starts_with("\"False\" \"Pending\""), "{gw}");
                assert!(gw.contains("listener http") && gw.contains(&taken), "{gw}");
                assert!(
                    l.starts_with("\"False\" \"Pending\"") && l.contains(&taken),
                    "{l}"
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never named the taken port"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = get("/metrics").await.unwrap();
    assert_eq!(unbound(&metrics).as_deref(), Some("1"), "{metrics}");
    // A retry that fails again changes nothing: no recompile (the generation stays), and the
    // status report, condition times included, is the same.
    let generation = |metrics: &str| gauge(metrics, "portcullis_config_generation");
    let (_, status) = get("/status").await.unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let (_, later) = get("/metrics").await.unwrap();
    assert_eq!(generation(&metrics), generation(&later));
    assert_eq!(get("/status").await.unwrap().1, status);

    // Released: the retry binds it, the gateway turns ready and serves there.
    first.take();
    wait_ready(&client, admin).await;
    assert_eq!(through_http().await, Some(200));
    let (gw, l) = programmed("http").await.unwrap();
    assert!(gw.starts_with("\"True\""), "{gw}");
    assert!(l.starts_with("\"True\""), "{l}");

    // A listener added on a port that is held: the gateway stays ready and listener http keeps
    // serving; the new listener and its Gateway are pending.
    std::fs::write(
        dir.path().join("good.yaml"),
        good().replace(
            &listener("http", 80, "HTTP"),
            &(listener("http", 80, "HTTP") + &listener("more", 81, "HTTP")),
        ),
    )
    .unwrap();
    let taken = format!("cannot listen on 127.0.0.1:{second_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((gw, l)) = programmed("more").await {
            if l.contains(&taken) {
                assert!(gw.starts_with("\"False\" \"Pending\""), "{gw}");
                assert!(gw.contains("listener more"), "{gw}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "listener more never reported pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get("/readyz").await.map(|r| r.0), Some(200));
    assert_eq!(through_http().await, Some(200));
    let (_, metrics) = get("/metrics").await.unwrap();
    assert_eq!(unbound(&metrics).as_deref(), Some("1"), "{metrics}");

    second.take();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !programmed("http")
        .await
        .is_some_and(|(gw, _)| gw.starts_with("\"True\""))
    {
        assert!(
            Instant::now() < deadline,
            "the Gateway never turned programmed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = get("/metrics").await.unwrap();
    assert_eq!(unbound(&metrics).as_deref(), Some("0"), "{metrics}");
}
