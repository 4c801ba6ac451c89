//! End to end in Kubernetes mode: the real binary reads a (fake, local) API server through
//! `kube::Client`, serves traffic by what it finds there, and writes status back.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::apiserver::ApiServer;
use support::{client, condition, eventually, loopback, Echo, Gateway};

const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
const CONTROLLER: &str = "portcullis.dev/gateway-controller";
const WAIT: Duration = Duration::from_secs(30);

fn gateway_class() -> Value {
    json!({
        "apiVersion": GATEWAY_API, "kind": "GatewayClass",
        "metadata": {"name": "portcullis"},
        "spec": {"controllerName": CONTROLLER},
    })
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn gateway(namespace: &str, allowed: Value) -> Value {
    named_gateway(namespace, "gw", allowed)
}

fn named_gateway(namespace: &str, name: &str, allowed: Value) -> Value {
    json!({
        "apiVersion": GATEWAY_API, "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "gatewayClassName": "portcullis",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                           "allowedRoutes": {"namespaces": allowed}}],
        },
    })
}

fn route(namespace: &str, name: &str, host: &str, gateway_namespace: &str, service: &str) -> Value {
    json!({
        "apiVersion": GATEWAY_API, "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "gw", "namespace": gateway_namespace}],
            "hostnames": [host],
            "rules": [{"backendRefs": [{"name": service, "namespace": namespace, "port": 80}]}],
        },
    })
}

/// A Service and its EndpointSlice, pointing at an echo backend on loopback.
fn service(server: &ApiServer, namespace: &str, name: &str, port: u16) {
    server.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }));
    server.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-1"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": port}],
    }));
}

/// The common start: an API server holding our GatewayClass, a Gateway in `apps` that admits
/// routes of its namespace, a Service `svc` in front of echo backend "a", and one HTTPRoute
/// `name` for `host` whose backendRef names `backend`. Keep the echo alive as long as the test.
async fn one_route(name: &str, host: &str, backend: &str) -> (ApiServer, Echo) {
    let server = ApiServer::start().await;
    let a = Echo::start("a");
    server.apply(gateway_class());
    server.apply(gateway("apps", json!({"from": "Same"})));
    service(&server, "apps", "svc", a.port);
    server.apply(route("apps", name, host, "apps", backend));
    (server, a)
}

fn route_status(server: &ApiServer, namespace: &str, name: &str) -> Value {
    server
        .get(GATEWAY_API, "HTTPRoute", namespace, name)
        .map(|r| r["status"].clone())
        .unwrap_or(Value::Null)
}

/// Our entry in a route's `status.parents`.
fn our_parent(status: &Value) -> Option<Value> {
    status["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER)
        .cloned()
}

/// The reason of our `Accepted` condition on a route, once written for its current generation.
fn accepted(server: &ApiServer, namespace: &str, name: &str) -> Option<(String, String)> {
    let route = server.get(GATEWAY_API, "HTTPRoute", namespace, name)?;
    let parent = our_parent(&route["status"])?;
    let c = condition(&parent["conditions"], "Accepted")?;
    if c["observedGeneration"] != route["metadata"]["generation"] {
        return None;
    }
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

/// The arguments that elect through the Lease `portcullis-system/portcullis` as `name`, with a
/// lease of `duration`.
fn lease_args(name: &'static str, duration: &'static str) -> [&'static str; 6] {
    [
        "--lease-duration",
        duration,
        "--namespace",
        "portcullis-system",
        "--leader-identity",
        name,
    ]
}

/// Who holds the Lease `portcullis-system/portcullis`, if anyone.
fn lease_holder(server: &ApiServer) -> Option<String> {
    server
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "portcullis-system",
            "portcullis",
        )
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
        .filter(|h| !h.is_empty())
}

fn status_writes(server: &ApiServer) -> Vec<support::apiserver::Logged> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_from_the_api_server_serve_traffic_and_get_status() {
    let server = ApiServer::start().await;
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    server.apply(gateway_class());
    server.apply(namespace("apps", json!({})));
    server.apply(gateway("apps", json!({"from": "Same"})));
    service(&server, "apps", "svc-a", a.port);
    service(&server, "apps", "svc-b", b.port);
    server.apply(route("apps", "web", "app.example", "apps", "svc-a"));
    // Another controller's entry, which must survive our writes.
    let theirs = json!({
        "parentRef": {"name": "elsewhere", "namespace": "apps", "group": "gateway.networking.k8s.io", "kind": "Gateway"},
        "controllerName": "example.com/other-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z"}],
    });
    server.set_status(
        GATEWAY_API,
        "HTTPRoute",
        "apps",
        "web",
        json!({"parents": [theirs.clone()]}),
    );
    // Writes that lose a race are read again and retried.
    server.conflict_next_status_writes(2);

    let gw = Gateway::start(&server, "replica", loopback(11), &[]);
    let http = client();
    eventually("the gateway turns ready", WAIT, || async {
        (gw.readyz(&http).await == Some(200)).then_some(())
    })
    .await;
    // Ready only once every kind was listed: the very first request is routed.
    assert_eq!(
        gw.backend(&http, "app.example", "/").await.as_deref(),
        Some("a"),
        "first request after /readyz"
    );

    let (status, reason) = eventually("the route's status is written", WAIT, || async {
        accepted(&server, "apps", "web")
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Accepted"));
    let parents = route_status(&server, "apps", "web")["parents"].clone();
    assert!(
        parents.as_array().unwrap().contains(&theirs),
        "the other controller's entry is kept: {parents}"
    );
    let class = server
        .get(GATEWAY_API, "GatewayClass", "", "portcullis")
        .unwrap();
    assert_eq!(
        condition(&class["status"]["conditions"], "Accepted").unwrap()["status"],
        "True"
    );
    let gateway_status = eventually("the Gateway's status is written", WAIT, || async {
        let g = server.get(GATEWAY_API, "Gateway", "apps", "gw")?;
        let listeners = &g["status"]["listeners"];
        (listeners[0]["attachedRoutes"] == 1).then(|| g["status"].clone())
    })
    .await;
    assert_eq!(
        condition(&gateway_status["conditions"], "Programmed").unwrap()["status"],
        "True"
    );
    assert_eq!(
        gateway_status["addresses"][0]["value"],
        gw.http.ip().to_string()
    );
    let accepted_since =
        condition(&gateway_status["conditions"], "Accepted").unwrap()["lastTransitionTime"].clone();

    // Edit the route: traffic follows, status follows the new generation, and conditions that
    // did not change keep their transition time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.apply(route("apps", "web", "app.example", "apps", "svc-b"));
    eventually("traffic follows the edited route", WAIT, || async {
        (gw.backend(&http, "app.example", "/").await.as_deref() == Some("b")).then_some(())
    })
    .await;
    eventually(
        "the status of the route's second generation is written",
        WAIT,
        || async { accepted(&server, "apps", "web") },
    )
    .await;
    let gateway_status =
        server.get(GATEWAY_API, "Gateway", "apps", "gw").unwrap()["status"].clone();
    assert_eq!(
        condition(&gateway_status["conditions"], "Accepted").unwrap()["lastTransitionTime"],
        accepted_since,
        "an unchanged condition keeps its lastTransitionTime"
    );

    // Delete it: 404, and the listener counts no route.
    assert!(server.remove(GATEWAY_API, "HTTPRoute", "apps", "web"));
    eventually("a deleted route answers 404", WAIT, || async {
        (gw.get(&http, "app.example", "/").await?.0 == 404).then_some(())
    })
    .await;
    eventually("attachedRoutes drops to 0", WAIT, || async {
        let g = server.get(GATEWAY_API, "Gateway", "apps", "gw")?;
        (g["status"]["listeners"][0]["attachedRoutes"] == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_from_a_namespace_the_listener_does_not_allow_is_not_accepted() {
    let server = ApiServer::start().await;
    let a = Echo::start("a");
    server.apply(gateway_class());
    server.apply(namespace("infra", json!({})));
    server.apply(namespace("apps", json!({"gateway-access": "yes"})));
    server.apply(namespace("other", json!({})));
    server.apply(gateway(
        "infra",
        json!({"from": "Selector", "selector": {"matchLabels": {"gateway-access": "yes"}}}),
    ));
    service(&server, "apps", "svc", a.port);
    service(&server, "other", "svc", a.port);
    server.apply(route("apps", "allowed", "allowed.example", "infra", "svc"));
    server.apply(route("other", "refused", "refused.example", "infra", "svc"));

    let gw = Gateway::start(&server, "replica", loopback(12), &["--leader-elect=false"]);
    let http = client();
    eventually("the allowed route serves", WAIT, || async {
        (gw.backend(&http, "allowed.example", "/").await.as_deref() == Some("a")).then_some(())
    })
    .await;
    let refused = eventually("the refused route's status is written", WAIT, || async {
        accepted(&server, "other", "refused")
    })
    .await;
    assert_eq!(
        (refused.0.as_str(), refused.1.as_str()),
        ("False", "NotAllowedByListeners")
    );
    assert_eq!(
        gw.get(&http, "refused.example", "/").await.map(|r| r.0),
        Some(404)
    );
    assert_eq!(
        accepted(&server, "apps", "allowed"),
        Some(("True".to_string(), "Accepted".to_string()))
    );

    // Labelling the namespace (a Namespace watch event) lets the route in.
    server.apply(namespace("other", json!({"gateway-access": "yes"})));
    eventually(
        "the route is accepted once its namespace is labelled",
        WAIT,
        || async {
            (accepted(&server, "other", "refused")? == ("True".to_string(), "Accepted".to_string()))
                .then_some(())
        },
    )
    .await;
    eventually("and serves", WAIT, || async {
        (gw.backend(&http, "refused.example", "/").await.as_deref() == Some("a")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_never_stops_while_the_api_server_is_away_and_watches_recover() {
    let server = ApiServer::start().await;
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    server.apply(gateway_class());
    server.apply(gateway("apps", json!({"from": "Same"})));
    service(&server, "apps", "svc-a", a.port);
    service(&server, "apps", "svc-b", b.port);
    server.apply(route("apps", "web", "app.example", "apps", "svc-a"));
    server.apply(route("apps", "second", "second.example", "apps", "svc-a"));

    let gw = Arc::new(Gateway::start(&server, "replica", loopback(13), &[]));
    let http = client();
    eventually("the gateway serves", WAIT, || async {
        (gw.backend(&http, "app.example", "/").await.as_deref() == Some("a")).then_some(())
    })
    .await;
    eventually("the route's status is written", WAIT, || async {
        accepted(&server, "apps", "web")
    })
    .await;

    // Load on both hosts for the whole test: every request must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (gw, http, stop, sent, failed) = (
            gw.clone(),
            http.clone(),
            stop.clone(),
            sent.clone(),
            failed.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = matches!(gw.get(&http, "app.example", "/").await, Some((200, _)));
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // The server goes away for two seconds and comes back with its history: the watches resume
    // from where they were, and a change made after the return is applied.
    server.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await;
    server.apply(route("apps", "web", "app.example", "apps", "svc-b"));
    eventually("a change after the restart is applied", WAIT, || async {
        (gw.backend(&http, "app.example", "/").await.as_deref() == Some("b")).then_some(())
    })
    .await;

    // Away again; meanwhile objects change and the history is compacted, so the watches'
    // resourceVersion is gone (410) and they must list again, noticing a deletion they never saw
    // as an event.
    server.stop();
    server.apply(route("apps", "web", "app.example", "apps", "svc-a"));
    assert!(server.remove(GATEWAY_API, "HTTPRoute", "apps", "second"));
    server.compact();
    let lists_before = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/httproutes") && !r.is_watch())
        .count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart().await;
    eventually(
        "the change made while away is applied after re-listing",
        WAIT,
        || async {
            (gw.backend(&http, "app.example", "/").await.as_deref() == Some("a")).then_some(())
        },
    )
    .await;
    eventually("the route deleted while away is gone", WAIT, || async {
        (gw.get(&http, "second.example", "/").await?.0 == 404).then_some(())
    })
    .await;
    let lists_after = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/httproutes") && !r.is_watch())
        .count();
    assert!(
        lists_after > lists_before,
        "HTTPRoutes were listed again after 410 Gone"
    );

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 50, "the load barely ran: {sent} requests");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed while the API server was away"
    );
    // The outages are told once each, by the gateway; kube's client's own ERROR line for every
    // failed retry is left out.
    let log = gw.process.log();
    assert!(
        !log.lines().any(|l| l.contains("kube_client")),
        "kube's client logged on its own:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_writes_status_and_another_takes_over_when_it_dies() {
    let (server, _backend) = one_route("first", "first.example", "svc").await;

    let address = loopback(14);
    let lease = |name: &'static str| lease_args(name, "3s");
    let mut replicas = vec![
        (
            "replica-a",
            Gateway::start(&server, "replica-a", address, &lease("replica-a")),
        ),
        (
            "replica-b",
            Gateway::start(&server, "replica-b", address, &lease("replica-b")),
        ),
    ];
    let http = client();
    let holder = || lease_holder(&server);
    let leader = eventually("a replica takes the lease", WAIT, || async { holder() }).await;
    for (_, gw) in &replicas {
        eventually("every replica serves", WAIT, || async {
            (gw.backend(&http, "first.example", "/").await.as_deref() == Some("a")).then_some(())
        })
        .await;
    }
    eventually("the first route's status is written", WAIT, || async {
        accepted(&server, "apps", "first")
    })
    .await;
    server.apply(route("apps", "second", "second.example", "apps", "svc"));
    eventually("the second route's status is written", WAIT, || async {
        accepted(&server, "apps", "second")
    })
    .await;
    let writers: Vec<String> = status_writes(&server)
        .into_iter()
        .map(|r| r.token)
        .collect();
    assert!(!writers.is_empty());
    assert!(
        writers.iter().all(|w| *w == leader),
        "only the leader {leader} writes status, writers were {writers:?}"
    );
    assert_eq!(
        holder().as_deref(),
        Some(leader.as_str()),
        "the lease stays with its holder"
    );

    // Kill the leader outright: no release, so the other replica must wait the lease out.
    let index = replicas.iter().position(|(n, _)| *n == leader).unwrap();
    let (_, mut dead) = replicas.remove(index);
    let (follower, survivor) = &replicas[0];
    dead.process.kill();
    let killed = Instant::now();
    let new_leader = eventually("the other replica takes the lease over", WAIT, || async {
        holder().filter(|h| h != &leader)
    })
    .await;
    let takeover = killed.elapsed();
    assert_eq!(new_leader, *follower);
    // 3 s lease, 0.4 s retry period, plus scheduling slack on a busy machine.
    assert!(
        takeover < Duration::from_secs(6),
        "takeover took {takeover:?}"
    );

    server.apply(route("apps", "third", "third.example", "apps", "svc"));
    eventually(
        "the new leader writes the third route's status",
        WAIT,
        || async { accepted(&server, "apps", "third") },
    )
    .await;
    let third_writers: Vec<String> = status_writes(&server)
        .into_iter()
        .filter(|r| r.path.contains("/httproutes/third/"))
        .map(|r| r.token)
        .collect();
    assert!(
        !third_writers.is_empty() && third_writers.iter().all(|w| w == follower),
        "the new leader wrote the third route's status: {third_writers:?}"
    );
    assert_eq!(
        survivor
            .backend(&http, "third.example", "/")
            .await
            .as_deref(),
        Some("a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_namespaces_are_watched() {
    let server = ApiServer::start().await;
    let a = Echo::start("a");
    server.apply(gateway_class());
    server.apply(gateway("apps", json!({"from": "All"})));
    service(&server, "apps", "svc", a.port);
    service(&server, "elsewhere", "svc", a.port);
    server.apply(route("apps", "mine", "mine.example", "apps", "svc"));
    server.apply(route(
        "elsewhere",
        "theirs",
        "theirs.example",
        "apps",
        "svc",
    ));

    let gw = Gateway::start(
        &server,
        "replica",
        loopback(15),
        &["--watch-namespaces", "apps", "--leader-elect=false"],
    );
    let http = client();
    eventually("the watched namespace's route serves", WAIT, || async {
        (gw.backend(&http, "mine.example", "/").await.as_deref() == Some("a")).then_some(())
    })
    .await;
    eventually("its status is written", WAIT, || async {
        accepted(&server, "apps", "mine")
    })
    .await;
    assert_eq!(
        gw.get(&http, "theirs.example", "/").await.map(|r| r.0),
        Some(404),
        "a route in an unwatched namespace is not served"
    );
    assert_eq!(route_status(&server, "elsewhere", "theirs"), Value::Null);

    let requests = server.requests();
    let namespaced_reads = |plural: &str| {
        requests
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/{plural}")))
            .all(|r| r.path.contains("/namespaces/apps/"))
    };
    for plural in [
        "gateways",
        "httproutes",
        "services",
        "endpointslices",
        "secrets",
    ] {
        assert!(
            namespaced_reads(plural),
            "{plural} are read in namespace apps only"
        );
    }
    let secret_reads: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/secrets"))
        .collect();
    assert!(!secret_reads.is_empty());
    assert!(
        secret_reads
            .iter()
            .all(|r| r.param("fieldSelector").as_deref() == Some("type=kubernetes.io/tls")),
        "only TLS Secrets are read"
    );
}

/// Waits for `replica` to hold the Lease, and checks that it took it over well within the
/// lease duration of the tests that call it (20 s) from `stopped`: the Lease was released,
/// not waited out; `otherwise` says what a slow handover means.
async fn takes_over_at_once(server: &ApiServer, replica: &str, stopped: Instant, otherwise: &str) {
    eventually("the other replica takes over", WAIT, || async {
        (lease_holder(server)? == replica).then_some(())
    })
    .await;
    let handover = stopped.elapsed();
    assert!(
        handover < Duration::from_secs(8),
        "handover took {handover:?}: {otherwise}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_shuts_down_hands_the_lease_over_at_once() {
    let server = ApiServer::start().await;
    server.apply(gateway_class());
    let address = loopback(16);
    // A lease long enough that waiting it out would fail the timing below.
    let lease = |name: &'static str| lease_args(name, "20s");
    let holder = || lease_holder(&server);
    let mut first = Gateway::start(&server, "first", address, &lease("first"));
    eventually("the first replica leads", WAIT, || async {
        (holder()? == "first").then_some(())
    })
    .await;
    let _second = Gateway::start(&server, "second", address, &lease("second"));
    // Let the second replica see the lease held.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stopped = Instant::now();
    assert!(
        first.process.terminate(Duration::from_secs(10)),
        "the leader exits cleanly on SIGTERM"
    );
    takes_over_at_once(
        &server,
        "second",
        stopped,
        "the lease was waited out rather than released",
    )
    .await;
}

/// A leader gives its Lease up as soon as it starts shutting down, not once its open
/// connections have drained: the replica taking over writes status in the meantime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_gives_up_its_lease_before_it_drains() {
    use tokio::io::AsyncWriteExt;
    let server = ApiServer::start().await;
    server.apply(gateway_class());
    server.apply(gateway("apps", json!({"from": "Same"})));
    // A backend that takes requests and never answers: the leader's drain waits on one.
    let silent = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    service(&server, "apps", "silent", silent_port);
    server.apply(route("apps", "slow", "slow.example", "apps", "silent"));
    let address = loopback(32);
    let holder = || lease_holder(&server);
    let mut first_args = lease_args("first", "20s").to_vec();
    first_args.extend(["--drain-timeout", "30s"]);
    let first = Gateway::start(&server, "first", address, &first_args);
    eventually("the first replica leads", WAIT, || async {
        (holder()? == "first").then_some(())
    })
    .await;
    let _second = Gateway::start(&server, "second", address, &lease_args("second", "20s"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A request in flight through the leader: sent on the route, so never answered (until the
    // route is served, the gateway answers at once, and the probe tries again).
    let mut request = eventually("a request waits on the leader", WAIT, || async {
        use tokio::io::AsyncReadExt;
        let mut tcp = tokio::net::TcpStream::connect(first.http).await.ok()?;
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: slow.example\r\n\r\n")
            .await
            .ok()?;
        let mut byte = [0u8; 1];
        let answered = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut byte));
        answered.await.is_err().then_some(tcp)
    })
    .await;

    let stopped = Instant::now();
    first.process.signal_terminate();
    takes_over_at_once(
        &server,
        "second",
        stopped,
        "the Lease was kept through the drain",
    )
    .await;
    let _ = request.shutdown().await;
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_every_initial_list() {
    let (server, _backend) = one_route("web", "app.example", "svc").await;
    // Endpoints arrive last: a table compiled before them would answer 503.
    server.delay_lists("endpointslices", Duration::from_secs(2));

    let started = Instant::now();
    let gw = Gateway::start(&server, "replica", loopback(17), &["--leader-elect=false"]);
    let http = client();
    // While the slow list runs, the process is alive (liveness probes pass) but not ready.
    eventually(
        "/healthz answers during the initial lists",
        WAIT,
        || async { (gw.admin_status(&http, "/healthz").await == Some(200)).then_some(()) },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "/healthz answered only after {:?}, once the slow list was done",
        started.elapsed()
    );
    assert_eq!(
        gw.readyz(&http).await,
        Some(503),
        "not ready before the lists"
    );
    eventually("the gateway turns ready", WAIT, || async {
        (gw.readyz(&http).await == Some(200)).then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "ready after {:?}, before the slow list finished",
        started.elapsed()
    );
    assert_eq!(
        gw.backend(&http, "app.example", "/").await.as_deref(),
        Some("a"),
        "the first table has the endpoints"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_starts_once_the_api_server_is_reachable() {
    let (server, _backend) = one_route("web", "app.example", "svc").await;
    server.stop();

    let gw = Gateway::start(&server, "replica", loopback(18), &[]);
    let http = client();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(
        gw.readyz(&http).await,
        Some(200),
        "not ready without the API server"
    );
    // Nothing is served yet, and the warning does not say the last configuration is.
    let log = gw.process.log();
    assert!(
        log.contains("first list failed; nothing is served before every first list is in"),
        "{log}"
    );
    server.restart().await;
    eventually(
        "the gateway serves once the API server answers",
        WAIT,
        || async {
            (gw.backend(&http, "app.example", "/").await.as_deref() == Some("a")).then_some(())
        },
    )
    .await;
    eventually("and writes status", WAIT, || async {
        accepted(&server, "apps", "web")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_scoped_to_two_gateways_share_a_route_without_undoing_each_other() {
    let server = ApiServer::start().await;
    let a = Echo::start("a");
    server.apply(gateway_class());
    server.apply(named_gateway("apps", "gw-a", json!({"from": "Same"})));
    server.apply(named_gateway("apps", "gw-b", json!({"from": "Same"})));
    service(&server, "apps", "svc", a.port);
    server.apply(json!({
        "apiVersion": GATEWAY_API, "kind": "HTTPRoute",
        "metadata": {"name": "shared", "namespace": "apps"},
        "spec": {
            "parentRefs": [{"name": "gw-a"}, {"name": "gw-b"}],
            "hostnames": ["shared.example"],
            "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}],
        },
    }));

    // One process per Gateway, each electing its own status writer (the default Lease name
    // follows --gateway).
    let gw_a = Gateway::start(
        &server,
        "scoped-a",
        loopback(19),
        &["--gateway", "apps/gw-a"],
    );
    let gw_b = Gateway::start(
        &server,
        "scoped-b",
        loopback(20),
        &["--gateway", "apps/gw-b"],
    );
    let http = client();
    for gw in [&gw_a, &gw_b] {
        eventually("each process serves the shared route", WAIT, || async {
            (gw.backend(&http, "shared.example", "/").await.as_deref() == Some("a")).then_some(())
        })
        .await;
    }
    let accepted_by = |parents: &[Value], gateway: &str| {
        parents.iter().any(|p| {
            p["parentRef"]["name"] == gateway
                && p["controllerName"] == CONTROLLER
                && condition(&p["conditions"], "Accepted").is_some_and(|c| c["status"] == "True")
        })
    };
    let parents = eventually("both processes' entries are written", WAIT, || async {
        let parents = route_status(&server, "apps", "shared")["parents"]
            .as_array()?
            .clone();
        (accepted_by(&parents, "gw-a") && accepted_by(&parents, "gw-b")).then_some(parents)
    })
    .await;
    assert_eq!(parents.len(), 2, "one entry per Gateway: {parents:?}");
    let route_writes = || {
        status_writes(&server)
            .into_iter()
            .filter(|r| r.path.contains("/httproutes/shared/"))
            .collect::<Vec<_>>()
    };
    let writers: std::collections::BTreeSet<String> =
        route_writes().into_iter().map(|r| r.token).collect();
    assert_eq!(
        writers,
        ["scoped-a", "scoped-b"].map(String::from).into(),
        "each process wrote its own entry"
    );

    // Settled: neither process rewrites what the other wrote.
    let settled = route_writes().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = route_writes();
    assert_eq!(
        later.len(),
        settled,
        "the route's status kept being rewritten: {:?}",
        &later[settled..]
    );
    assert_eq!(
        route_status(&server, "apps", "shared")["parents"].as_array(),
        Some(&parents)
    );
}

/// Our condition `type_` on a route's parent entry, once written for the route's current
/// generation: (status, reason).
fn our_condition(
    server: &ApiServer,
    namespace: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String)> {
    let route = server.get(GATEWAY_API, "HTTPRoute", namespace, name)?;
    let parent = our_parent(&route["status"])?;
    let c = condition(&parent["conditions"], type_)?;
    if c["observedGeneration"] != route["metadata"]["generation"] {
        return None;
    }
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

/// The Events regarding an HTTPRoute.
fn route_events(server: &ApiServer, namespace: &str, name: &str) -> Vec<Value> {
    server
        .objects("events.k8s.io/v1", "Event")
        .into_iter()
        .filter(|e| {
            e["regarding"]["kind"] == "HTTPRoute"
                && e["regarding"]["namespace"] == namespace
                && e["regarding"]["name"] == name
        })
        .collect()
}

/// How many times events were observed: an Event counts once, or as many times as its series
/// says when repeats were folded into it.
fn occurrences(events: &[Value]) -> u64 {
    events
        .iter()
        .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_backend_is_missing_gets_a_warning_event_once_per_breakage() {
    let (server, _backend) = one_route("web", "web.example", "missing").await;

    let gw = Gateway::start(&server, "replica", loopback(21), &[]);
    let http = client();
    let unresolved = ("False".to_string(), "BackendNotFound".to_string());
    let resolved = ("True".to_string(), "ResolvedRefs".to_string());
    eventually("the broken route's status is written", WAIT, || async {
        (our_condition(&server, "apps", "web", "ResolvedRefs")? == unresolved).then_some(())
    })
    .await;
    let events = eventually("a Warning Event is recorded", WAIT, || async {
        let events = route_events(&server, "apps", "web");
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    let uid =
        server.get(GATEWAY_API, "HTTPRoute", "apps", "web").unwrap()["metadata"]["uid"].clone();
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "BackendNotFound");
    assert_eq!(event["action"], "Reconcile");
    assert_eq!(event["reportingController"], CONTROLLER);
    assert_eq!(event["regarding"]["uid"], uid);
    assert_eq!(event["regarding"]["apiVersion"], GATEWAY_API);
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("missing"),
        "the note is the condition's message: {event}"
    );
    assert_eq!(occurrences(&events), 1);

    // Recompiles that leave the route broken record nothing more.
    server.apply(route("apps", "other", "other.example", "apps", "svc"));
    eventually("an unrelated route serves", WAIT, || async {
        (gw.backend(&http, "other.example", "/").await.as_deref() == Some("a")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        occurrences(&route_events(&server, "apps", "web")),
        1,
        "a steady broken state records one event"
    );

    // Fixed, then broken again: a second occurrence.
    server.apply(route("apps", "web", "web.example", "apps", "svc"));
    eventually("the fixed route's status is written", WAIT, || async {
        (our_condition(&server, "apps", "web", "ResolvedRefs")? == resolved).then_some(())
    })
    .await;
    assert_eq!(occurrences(&route_events(&server, "apps", "web")), 1);
    server.apply(route("apps", "web", "web.example", "apps", "missing"));
    eventually("the route broken again is reported", WAIT, || async {
        (our_condition(&server, "apps", "web", "ResolvedRefs")? == unresolved).then_some(())
    })
    .await;
    eventually("breaking it again records again", WAIT, || async {
        (occurrences(&route_events(&server, "apps", "web")) == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(occurrences(&route_events(&server, "apps", "web")), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_addresses_follow_the_gateways_service_and_fall_back_to_the_pod_ip() {
    let (server, _backend) = one_route("web", "app.example", "svc").await;

    // The Service is looked for in the client configuration's namespace, portcullis-system.
    let gw = Gateway::start(
        &server,
        "replica",
        loopback(22),
        &["--gateway-service", "portcullis", "--pod-ip", "192.0.2.10"],
    );
    let http = client();
    let addresses = || {
        server
            .get(GATEWAY_API, "Gateway", "apps", "gw")
            .map(|g| g["status"]["addresses"].clone())
            .unwrap_or(Value::Null)
    };
    let reported = |expected: Value| {
        let addresses = &addresses;
        async move {
            eventually(&format!("the Gateway reports {expected}"), WAIT, || async {
                (addresses() == expected).then_some(())
            })
            .await
        }
    };
    // Before the Service exists: the pod's IP.
    reported(json!([{"type": "IPAddress", "value": "192.0.2.10"}])).await;
    // The data plane binds as before, whatever is reported.
    assert_eq!(
        gw.backend(&http, "app.example", "/").await.as_deref(),
        Some("a")
    );

    server.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "portcullis", "namespace": "portcullis-system"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20",
                 "ports": [{"name": "http", "port": 80}]},
    }));
    // No load balancer yet: the cluster IP.
    reported(json!([{"type": "IPAddress", "value": "10.96.0.20"}])).await;
    let ingress = |ingress: Value| json!({"loadBalancer": {"ingress": ingress}});
    server.set_status(
        "v1",
        "Service",
        "portcullis-system",
        "portcullis",
        ingress(json!([{"ip": "203.0.113.10"}])),
    );
    reported(json!([{"type": "IPAddress", "value": "203.0.113.10"}])).await;
    server.set_status(
        "v1",
        "Service",
        "portcullis-system",
        "portcullis",
        ingress(json!([{"hostname": "lb.example.com"}])),
    );
    reported(json!([{"type": "Hostname", "value": "lb.example.com"}])).await;

    assert!(server.remove("v1", "Service", "portcullis-system", "portcullis"));
    reported(json!([{"type": "IPAddress", "value": "192.0.2.10"}])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_leaves_our_gateway_loses_our_status_entry_and_keeps_the_others() {
    let server = ApiServer::start().await;
    let a = Echo::start("a");
    server.apply(gateway_class());
    server.apply(json!({
        "apiVersion": GATEWAY_API, "kind": "GatewayClass",
        "metadata": {"name": "other"},
        "spec": {"controllerName": "example.com/other-controller"},
    }));
    server.apply(gateway("apps", json!({"from": "Same"})));
    let mut elsewhere = named_gateway("apps", "elsewhere", json!({"from": "Same"}));
    elsewhere["spec"]["gatewayClassName"] = json!("other");
    server.apply(elsewhere);
    service(&server, "apps", "svc", a.port);
    server.apply(route("apps", "web", "web.example", "apps", "svc"));
    // Routes that never named a Gateway of ours: nothing of ours to write there, ever.
    let mut bystander = route("apps", "bystander", "bystander.example", "apps", "svc");
    bystander["spec"]["parentRefs"] = json!([{"name": "elsewhere"}]);
    server.apply(bystander);
    // The other controller's entry for its own Gateway, as it would write it.
    let theirs = json!({
        "parentRef": {"name": "elsewhere", "namespace": "apps", "group": "gateway.networking.k8s.io", "kind": "Gateway"},
        "controllerName": "example.com/other-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z"}],
    });
    for name in ["web", "bystander"] {
        server.set_status(
            GATEWAY_API,
            "HTTPRoute",
            "apps",
            name,
            json!({"parents": [theirs.clone()]}),
        );
    }

    let gw = Gateway::start(&server, "replica", loopback(23), &["--leader-elect=false"]);
    let http = client();
    eventually("the route serves", WAIT, || async {
        (gw.backend(&http, "web.example", "/").await.as_deref() == Some("a")).then_some(())
    })
    .await;
    eventually("our entry is written beside theirs", WAIT, || async {
        let (status, _) = accepted(&server, "apps", "web")?;
        (status == "True").then_some(())
    })
    .await;

    // The route now names only the other controller's Gateway: the compiler no longer reports
    // it, and our entry must not linger.
    let mut moved = route("apps", "web", "web.example", "apps", "svc");
    moved["spec"]["parentRefs"] = json!([{"name": "elsewhere"}]);
    server.apply(moved);
    let parents = eventually("our entry is removed", WAIT, || async {
        let status = route_status(&server, "apps", "web");
        our_parent(&status)
            .is_none()
            .then(|| status["parents"].clone())
    })
    .await;
    assert_eq!(
        parents,
        json!([theirs]),
        "the other controller's entry stays"
    );
    eventually("the route stops serving", WAIT, || async {
        (gw.get(&http, "web.example", "/").await.map(|r| r.0) == Some(404)).then_some(())
    })
    .await;

    // Settled: no more writes to the route, and none ever to the bystander.
    let writes_to = |name: &str| {
        status_writes(&server)
            .into_iter()
            .filter(|r| r.path.contains(&format!("/httproutes/{name}/")))
            .count()
    };
    let settled = writes_to("web");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(writes_to("web"), settled, "the route kept being rewritten");
    assert_eq!(writes_to("bystander"), 0, "a route never ours was written");
    assert_eq!(
        route_status(&server, "apps", "bystander")["parents"],
        json!([theirs])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_requests_hang_steps_down_before_another_takes_over() {
    let (server, _backend) = one_route("first", "first.example", "svc").await;
    let address = loopback(24);
    // 3 s lease: a leader steps down 2 s after its last renewal, the other takes over no
    // sooner than 3 s after the last renewal it saw.
    let lease = |name: &'static str| lease_args(name, "3s");
    let replicas = [
        (
            "replica-a",
            Gateway::start(&server, "replica-a", address, &lease("replica-a")),
        ),
        (
            "replica-b",
            Gateway::start(&server, "replica-b", address, &lease("replica-b")),
        ),
    ];
    let holder = || lease_holder(&server);
    let http = client();
    let leader = eventually("a replica takes the lease", WAIT, || async { holder() }).await;
    let (_, old) = replicas.iter().find(|(n, _)| *n == leader).unwrap();
    eventually("the leader says it leads", WAIT, || async {
        (old.metric(&http, "portcullis_leader").await? == 1.0).then_some(())
    })
    .await;

    // The leader's connection to the API server stalls for its Lease requests only: its
    // renewals are never answered, and nothing tells it that they failed.
    server.stall(&leader, "/leases/");
    let new_leader = eventually("the other replica takes the lease over", WAIT, || async {
        holder().filter(|h| h != &leader)
    })
    .await;
    assert_ne!(new_leader, leader);
    assert_eq!(
        old.metric(&http, "portcullis_leader").await,
        Some(0.0),
        "the old leader still says it leads once the other has taken over: two status writers"
    );
    server.unstall();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_the_api_server_never_answers_holds_back_no_other() {
    let (server, _backend) = one_route("first", "first.example", "svc").await;
    let gw = Gateway::start(
        &server,
        "replica",
        loopback(25),
        &["--leader-elect", "false"],
    );
    let http = client();
    eventually("the first route's status is written", WAIT, || async {
        accepted(&server, "apps", "first")
    })
    .await;

    // Writes of the first route's status hang; a change to it makes the writer try one.
    server.stall("replica", "/httproutes/first/status");
    let mut changed = route("apps", "first", "first.example", "apps", "svc");
    changed["spec"]["rules"][0]["matches"] =
        json!([{"path": {"type": "PathPrefix", "value": "/v2"}}]);
    server.apply(changed);
    eventually("the writer tries the stalled write", WAIT, || async {
        status_writes(&server)
            .iter()
            .any(|r| r.path.ends_with("/httproutes/first/status"))
            .then_some(())
    })
    .await;
    let before = status_writes(&server).len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A route added meanwhile is served, and its status written regardless.
    server.apply(route("apps", "second", "second.example", "apps", "svc"));
    eventually("the second route is served", WAIT, || async {
        (gw.backend(&http, "second.example", "/").await.as_deref() == Some("a")).then_some(())
    })
    .await;
    eventually(
        "the second route's status is written while the first's write hangs",
        WAIT,
        || async { accepted(&server, "apps", "second") },
    )
    .await;
    assert!(status_writes(&server).len() > before);
    server.unstall();
    eventually(
        "the first route's status is written once the server answers",
        WAIT,
        || async { accepted(&server, "apps", "first") },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_the_server_answers_410_at_once_are_listed_again_with_a_backoff() {
    let (server, _backend) = one_route("first", "first.example", "svc").await;
    let gw = Gateway::start(
        &server,
        "replica",
        loopback(26),
        &["--leader-elect", "false"],
    );
    let http = client();
    eventually("the gateway serves", WAIT, || async {
        (gw.backend(&http, "first.example", "/").await.as_deref() == Some("a")).then_some(())
    })
    .await;
    let route_lists = || {
        server
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/httproutes") && !r.is_watch())
            .count()
    };

    // Every watch now ends at once with 410 Gone: each is followed by a list, which succeeds,
    // and a watch from the listed version, which ends the same way.
    let before = route_lists();
    server.gone_watches(true);
    // A restart cuts the watches open now.
    server.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lists = route_lists() - before;
    server.gone_watches(false);
    // With a backoff from 0.1 s doubling to 2 s, three seconds hold about five lists (one
    // more for a watch that was open when the failures began); without one, hundreds.
    assert!(
        (1..=10).contains(&lists),
        "{lists} lists of HTTPRoutes in 3 s while every watch was answered 410"
    );

    // Changes still arrive, and once watches work again they are followed as they come.
    server.apply(route("apps", "second", "second.example", "apps", "svc"));
    eventually("a route added afterwards is served", WAIT, || async {
        (gw.backend(&http, "second.example", "/").await.as_deref() == Some("a")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_the_gateway_makes_is_granted_by_its_rbac() {
    let (server, _backend) = one_route("first", "first.example", "svc").await;
    // Objects of every kind whose status is written, a route whose backend is missing (a
    // Warning Event), and a status write refused as a conflict (the object read again).
    server.apply(json!({
        "apiVersion": GATEWAY_API, "kind": "BackendTLSPolicy",
        "metadata": {"name": "svc-tls", "namespace": "apps"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "svc"}],
            "validation": {"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "svc-ca"}],
                           "hostname": "svc.apps"},
        },
    }));
    server.apply(route("apps", "broken", "broken.example", "apps", "missing"));
    server.conflict_next_status_writes(1);
    let mut gw = Gateway::start(
        &server,
        "replica",
        loopback(27),
        &["--lease-duration", "3s"],
    );
    eventually("the routes' status is written", WAIT, || async {
        accepted(&server, "apps", "first")?;
        accepted(&server, "apps", "broken")
    })
    .await;
    eventually("the policy's status is written", WAIT, || async {
        let policy = server.get(GATEWAY_API, "BackendTLSPolicy", "apps", "svc-tls")?;
        policy["status"]["ancestors"]
            .as_array()?
            .first()
            .map(|_| ())
    })
    .await;
    eventually("the missing backend is told in an Event", WAIT, || async {
        route_events(&server, "apps", "broken").first().map(|_| ())
    })
    .await;
    // A clean stop releases the Lease.
    assert!(gw.process.terminate(WAIT), "the gateway stops cleanly");

    let requests = server.requests();
    let refused: Vec<String> = requests
        .iter()
        .filter_map(|r| support::rbac::permits(&r.method, &r.path, r.is_watch()).err())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        refused.is_empty(),
        "requests RBAC would refuse (tests/support/rbac.rs, the manifests and the chart must grant them):\n{}",
        refused.join("\n")
    );
    // The scenario did reach what it meant to: a conflict's re-read and the Lease's release.
    let named = [
        "/httproutes/",
        "/gateways/",
        "/gatewayclasses/",
        "/backendtlspolicies/",
    ];
    assert!(requests
        .iter()
        .any(|r| r.method == "GET" && named.iter().any(|n| r.path.contains(n))));
    assert!(requests
        .iter()
        .any(|r| r.method == "PUT" && r.path.contains("/leases/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_class_in_use_is_deleted_only_once_its_gateways_are() {
    const FINALIZER: &str = "gateway-exists-finalizer.gateway.networking.k8s.io";
    let (server, _backend) = one_route("first", "first.example", "svc").await;
    // Another controller's class, whose finalizers are its own business.
    server.apply(json!({
        "apiVersion": GATEWAY_API, "kind": "GatewayClass",
        "metadata": {"name": "theirs", "finalizers": [FINALIZER]},
        "spec": {"controllerName": "example.com/other"},
    }));
    let gw = Gateway::start(
        &server,
        "replica",
        loopback(28),
        &["--leader-elect", "false"],
    );
    let http = client();
    let finalizers = |name: &str| -> Option<Vec<String>> {
        let class = server.get(GATEWAY_API, "GatewayClass", "", name)?;
        Some(
            class["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect(),
        )
    };
    eventually("our class in use gets the finalizer", WAIT, || async {
        finalizers("portcullis")?
            .contains(&FINALIZER.to_string())
            .then_some(())
    })
    .await;

    // Deleting the class while its Gateway is there only marks it: traffic goes on.
    assert!(server.remove(GATEWAY_API, "GatewayClass", "", "portcullis"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        finalizers("portcullis").is_some(),
        "the class in use was deleted"
    );
    assert_eq!(
        gw.backend(&http, "first.example", "/").await.as_deref(),
        Some("a"),
        "the Gateway of a class being deleted still serves"
    );

    // Once the Gateway goes, the finalizer does, and so does the class.
    assert!(server.remove(GATEWAY_API, "Gateway", "apps", "gw"));
    eventually("the class goes once no Gateway names it", WAIT, || async {
        finalizers("portcullis").is_none().then_some(())
    })
    .await;
    assert_eq!(
        finalizers("theirs"),
        Some(vec![FINALIZER.to_string()]),
        "another controller's class keeps its finalizer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_watching_some_namespaces_leave_the_class_finalizer_alone() {
    // One class, a Gateway in `apps` only, and two processes each watching one namespace: the
    // one that sees the Gateway and the one that does not would judge the class's use apart.
    let (server, _backend) = one_route("first", "first.example", "svc").await;
    let _a = Gateway::start(
        &server,
        "watches-apps",
        loopback(29),
        &["--watch-namespaces", "apps", "--leader-elect=false"],
    );
    let _b = Gateway::start(
        &server,
        "watches-other",
        loopback(30),
        &["--watch-namespaces", "other", "--leader-elect=false"],
    );
    eventually("the route's status is written", WAIT, || async {
        accepted(&server, "apps", "first")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let class_writes: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/gatewayclasses/portcullis"))
        .map(|r| r.token)
        .collect();
    assert!(
        class_writes.is_empty(),
        "processes that see only some Gateways wrote the class's finalizers: {class_writes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_answers_come_late_steps_down_before_another_takes_over() {
    let (server, _backend) = one_route("first", "first.example", "svc").await;
    let address = loopback(31);
    // 12 s lease: an 8 s renew deadline, a 1.6 s retry period.
    let lease = |name: &'static str| lease_args(name, "12s");
    let lease_object = || {
        server.get(
            "coordination.k8s.io/v1",
            "Lease",
            "portcullis-system",
            "portcullis",
        )
    };
    let holder = || lease_holder(&server);
    let http = client();
    // The first replica's Lease writes land at once, but their answers take 7.6 s: it creates
    // the Lease, and leads only once the answer comes.
    server.slow_answers("slow-a", "/leases", Duration::from_millis(7600));
    let first = Gateway::start(&server, "slow-a", address, &lease("slow-a"));
    eventually("the first replica creates the lease", WAIT, || async {
        lease_object().map(|_| ())
    })
    .await;
    let _second = Gateway::start(&server, "slow-b", address, &lease("slow-b"));
    eventually("the first replica leads", WAIT, || async {
        (first.metric(&http, "portcullis_leader").await? == 1.0).then_some(())
    })
    .await;
    assert_eq!(holder().as_deref(), Some("slow-a"));

    // Its Lease requests now hang. Its renew deadline runs from when it sent the write that
    // created the Lease (the time the other replica counts the lease from), not from when the
    // answer came: it steps down before the other takes over.
    server.stall("slow-a", "/leases");
    eventually("the other replica takes the lease over", WAIT, || async {
        holder().filter(|h| h == "slow-b")
    })
    .await;
    assert_eq!(
        first.metric(&http, "portcullis_leader").await,
        Some(0.0),
        "the old leader still says it leads once the other has taken over: two status writers"
    );
    server.unstall();
}
