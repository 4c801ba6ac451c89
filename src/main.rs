//! The `portcullis` command: run the gateway, or check a directory of manifests offline.

#![allow(
    clippy::print_stdout,
    reason = "check and explain print their reports on stdout"
)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::{Layer as _, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use portcullis::controller::{directory::DirectoryProvider, is_dns_name, Kind, Store};
use portcullis::dataplane::{self, RunOptions};
use portcullis::routing::{compile, CompileOptions};

/// mimalloc instead of the C library's allocator. A proxied request allocates and frees dozens of
/// small buffers and header maps; glibc's malloc and free were a tenth of the proxy's CPU time in
/// profiles, and musl's (the static image's libc) is slower still.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A Kubernetes Gateway API implementation on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "PORTCULLIS_LOG_FORMAT",
        value_parser = ["text", "json"]
    )]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic by the Gateway API objects in a directory of YAML (`--config-dir`,
    /// standalone mode), or without it by those of the cluster (Kubernetes mode).
    Run(RunArgs),
    /// Compile a directory of manifests offline and print every object's conditions.
    /// Exits 1 when a file does not parse, an object or listener is not accepted, listeners
    /// conflict, a reference does not resolve, a rule is dropped, a Gateway's address cannot be
    /// had, or nothing in the directory is served. Objects nothing serves are named.
    Check {
        /// Directory of YAML manifests.
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        compile: CompileArgs,
    },
    /// Explain which rule of a directory's configuration a request would match, and why the
    /// rules tried before it did not.
    Explain {
        /// Directory of YAML manifests.
        #[arg(long)]
        config_dir: PathBuf,
        /// The listener the request arrives on: namespace/gateway/listener.
        #[arg(long)]
        listener: String,
        /// Host header.
        #[arg(long, default_value = "")]
        host: String,
        /// Path, with an optional ?query.
        #[arg(long, default_value = "/")]
        path: String,
        /// Method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// A header as name:value; repeat for more.
        #[arg(long = "header")]
        headers: Vec<String>,
        #[command(flatten)]
        compile: CompileArgs,
    },
    /// Run a small echo backend that answers with JSON describing each request (for the bundled
    /// example and for trying routes out).
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// Name the backend reports in every answer.
        #[arg(long, default_value = "echo")]
        name: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Directory of Gateway API and core YAML manifests, watched for changes. Without it, the
    /// gateway reads the Kubernetes API (KUBECONFIG, ~/.kube/config or in-cluster).
    #[arg(long, env = "PORTCULLIS_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Address of the admin endpoint (/healthz, /readyz, /metrics, /status, /debug/routes,
    /// /debug/explain).
    #[arg(long, default_value = "127.0.0.1:9901", env = "PORTCULLIS_ADMIN_ADDR")]
    admin_addr: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How long a client may take to send a whole HTTP/1 request header, from its first byte
    /// to the empty line that ends it; past it the client gets 408 and the connection closes
    /// (0: no limit; each read still has 60 s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    request_header_timeout: Duration,
    /// Share of requests written to the JSON access log on stdout, 0.0 to 1.0 (0 turns it off).
    #[arg(long, default_value_t = 1.0, env = "PORTCULLIS_ACCESS_LOG_SAMPLE", value_parser = parse_share)]
    access_log_sample: f64,
    /// Count every request in the labelled request metrics (`--request-metrics=false` turns them
    /// off, for measuring what they cost).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    request_metrics: bool,
    /// Idle backend connections kept open for reuse, over all backends together: 1 to
    /// 1000000. Requests in flight beyond this many find no idle connection when they finish,
    /// so theirs are closed, and later requests open new ones. (Pingora's pool cannot be sized
    /// to none: with 0 it would keep every connection, unbounded.)
    #[arg(long, default_value_t = 1024, env = "PORTCULLIS_UPSTREAM_IDLE_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    upstream_idle_connections: u64,
    /// Threads serving traffic; by default one per CPU this process may use (its affinity and
    /// cgroup CPU limit). With one, everything runs on a single thread, which costs about a
    /// tenth less CPU per request than one worker thread beside the main thread.
    #[arg(long, env = "PORTCULLIS_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(flatten)]
    compile: CompileArgs,
    #[command(flatten)]
    kubernetes: portcullis::controller::kubernetes::KubernetesArgs,
}

#[derive(Args)]
struct CompileArgs {
    /// GatewayClasses whose spec.controllerName equals this are served.
    #[arg(long, default_value = portcullis::DEFAULT_CONTROLLER_NAME, env = "PORTCULLIS_CONTROLLER_NAME")]
    controller_name: String,
    /// Addresses handed to Gateways, each its own: a list (`127.0.0.1,127.0.0.2`) and/or
    /// ranges (`127.0.10.1-127.0.10.250`).
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_pool)]
    address_pool: AddressPool,
    /// Serve listener port P on socket port P + N, so that manifests written for 80 and 443 run
    /// unprivileged. A listener whose port lands outside 1-65535 is reported not programmed.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-65534..=65534))]
    port_offset: i32,
    /// Serve listener port P on socket port Q (`80=8080,443=8443`); wins over --port-offset.
    #[arg(long, value_parser = parse_port_map)]
    port_map: Option<PortMap>,
    /// Serve only this Gateway (namespace/name); the others are left to other processes.
    #[arg(long, env = "PORTCULLIS_GATEWAY", value_parser = parse_gateway)]
    gateway: Option<String>,
}

#[derive(Clone)]
struct AddressPool(Vec<IpAddr>);
#[derive(Clone, Debug)]
struct PortMap(BTreeMap<u16, u16>);

impl CompileArgs {
    fn options(&self) -> CompileOptions {
        CompileOptions {
            controller_name: self.controller_name.clone(),
            address_pool: self.address_pool.0.clone(),
            port_offset: self.port_offset,
            port_map: self.port_map.clone().map(|m| m.0).unwrap_or_default(),
            only_gateway: self.gateway.clone(),
            // `check` reports conditions as of now, as a running gateway would.
            now: portcullis::controller::directory::now_rfc3339(),
            ..CompileOptions::default()
        }
    }
}

fn parse_pool(text: &str) -> Result<AddressPool, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (IpAddr, IpAddr) = (
                    a.parse().map_err(|e| format!("{a}: {e}"))?,
                    b.parse().map_err(|e| format!("{b}: {e}"))?,
                );
                let (IpAddr::V4(a), IpAddr::V4(b)) = (a, b) else {
                    return Err(format!(
                        "{part}: ranges are IPv4 only; list IPv6 addresses one by one"
                    ));
                };
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 65_536 {
                    return Err(format!(
                        "{part}: a range must go upwards and hold at most 65536 addresses"
                    ));
                }
                out.extend((a..=b).map(|n| IpAddr::from(std::net::Ipv4Addr::from(n))));
            }
            None => out.push(part.parse().map_err(|e| format!("{part}: {e}"))?),
        }
    }
    if out.is_empty() {
        return Err("the address pool needs at least one address".to_string());
    }
    Ok(AddressPool(out))
}

/// A `--gateway` value: `namespace/name`, each part a name Kubernetes allows (lower-case
/// letters, digits, `-`, and `.` in the name). Anything else names no Gateway there can be, and
/// the process would serve nothing without a word.
fn parse_gateway(text: &str) -> Result<String, String> {
    // A namespace is a DNS label, an object's name a DNS subdomain.
    let valid = |namespace, name| is_dns_name(namespace, true) && is_dns_name(name, false);
    match text.split_once('/') {
        Some((namespace, name)) if valid(namespace, name) => Ok(text.to_string()),
        _ => Err(format!(
            "{text:?} is not a Gateway's namespace/name (such as infra/public): give the \
             namespace, a slash and the name, in lower case"
        )),
    }
}

fn parse_port_map(text: &str) -> Result<PortMap, String> {
    let mut map = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (from, to) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair}: expected LISTENER_PORT=SOCKET_PORT"))?;
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{pair}: {p} is not a port (1-65535)")),
            Ok(port) => Ok(port),
        };
        let (from, to) = (port(from)?, port(to)?);
        if let Some((other, _)) = map.iter().find(|(_, &socket)| socket == to) {
            return Err(format!(
                "{pair}: listener ports {other} and {from} are both mapped to socket port {to}; \
                 give each its own"
            ));
        }
        if map.insert(from, to).is_some() {
            return Err(format!("{pair}: listener port {from} is mapped twice"));
        }
    }
    Ok(PortMap(map))
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text} is not a share between 0.0 and 1.0")),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    // A bare 0 needs no unit on the command line, as in `--drain-timeout 0`.
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    portcullis::routing::parse_duration(text).map(|d| d.unwrap_or(Duration::ZERO))
}

/// Logs to stderr at `default_level`, or as `PORTCULLIS_LOG` says.
fn init_logging(format: &str, default_level: &str) {
    // A PORTCULLIS_LOG that does not parse is said once logging is up, not silently ignored.
    let mut bad_filter = None;
    let filter = match std::env::var("PORTCULLIS_LOG") {
        Ok(text) => tracing_subscriber::EnvFilter::try_new(&text).unwrap_or_else(|err| {
            bad_filter = Some((text, err));
            tracing_subscriber::EnvFilter::new(default_level)
        }),
        Err(_) => tracing_subscriber::EnvFilter::new(default_level),
    };
    // kube's client logs every failed request to the API server as an ERROR of its own, a
    // few a second per watch while the server is away; the gateway reports those failures
    // itself, once per distinct problem, with what it does about them. Unless the filter asks
    // for kube's client by name, its request log is left out.
    let filter = if std::env::var("PORTCULLIS_LOG").is_ok_and(|text| text.contains("kube_client")) {
        filter
    } else {
        filter.add_directive(
            "kube_client::client::builder=off"
                .parse()
                .expect("a valid directive"),
        )
    };
    // Colours only for a person at a terminal: escape codes in a file or a log collector are
    // noise.
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // What is written goes through the filter; broken client headers are counted whatever it
    // says (the counting layer asks for Pingora's errors on its own).
    let written = written_filter(filter);
    let counted = BrokenClientHeaders.with_filter(tracing::level_filters::LevelFilter::ERROR);
    let registry = tracing_subscriber::registry().with(counted);
    if format == "json" {
        registry.with(layer.json().with_filter(written)).init();
    } else {
        registry.with(layer.with_filter(written)).init();
    }
    if let Some((text, err)) = bad_filter {
        // An error, so that it shows at every default level: the filter asked for is not the
        // one in force.
        tracing::error!(
            "PORTCULLIS_LOG={text:?} is not a log filter ({err}); logging at {default_level}. \
             Write a level (debug) or directives (portcullis=debug,pingora=warn)"
        );
    }
}

/// What the log writer lets through: what `filter` (`PORTCULLIS_LOG`) allows, but for broken
/// client headers, which are counted instead.
///
/// Its level hint is the `log` crate's maximum level once logging is up (Pingora logs through
/// `log`). Without one, every `debug!` and `trace!` call on Pingora's request path would hand
/// its record to the subscriber, only to be dropped there: 2% of the proxy's CPU time.
fn written_filter<S>(
    filter: tracing_subscriber::EnvFilter,
) -> impl tracing_subscriber::layer::Filter<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    filter.and(NotBrokenClientHeader)
}

/// Whether an event is Pingora's error for a client connection that broke while sending a
/// request header (`Fail to proxy: Downstream ...`). Pingora logs through the `log` crate: its
/// records arrive as events whose target is the field `log.target`.
fn is_broken_client_header(event: &tracing::Event<'_>) -> bool {
    if *event.metadata().level() != tracing::Level::ERROR {
        return false;
    }
    #[derive(Default)]
    struct Fields {
        target: String,
        message: String,
    }
    impl tracing::field::Visit for Fields {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            if field.name() == "log.target" {
                self.target = value.to_string();
            }
        }
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            }
        }
    }
    let mut fields = Fields::default();
    event.record(&mut fields);
    match fields.target.as_str() {
        // A header the gateway cut off for taking too long is counted as that, not as a
        // client that broke off.
        "pingora_proxy" => {
            fields.message.starts_with("Fail to proxy: Downstream")
                && !fields.message.contains(HEADER_TIMED_OUT)
        }
        // An HTTP/2 client that never sent its preface (or gave up on it).
        "pingora_core::apps" => fields.message.starts_with("H2 handshake error"),
        _ => false,
    }
}

/// What the request header deadline's error says; see `dataplane::header_deadline`.
const HEADER_TIMED_OUT: &str = portcullis::dataplane::header_deadline::TIMED_OUT;

/// Counts the client connections that break while sending a request header, in
/// `portcullis_client_header_failures_total`, whatever the log filter lets through.
struct BrokenClientHeaders;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BrokenClientHeaders {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if is_broken_client_header(event) {
            portcullis::dataplane::metrics::global()
                .client_header_failures
                .inc();
        }
    }
}

/// Keeps those errors out of the log. Pingora logs each at error level, so that a client
/// resetting connection after connection, or a load balancer's health check that resets its
/// probes, would write one error line each; the metric has them.
struct NotBrokenClientHeader;

impl<S> tracing_subscriber::layer::Filter<S> for NotBrokenClientHeader {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !is_broken_client_header(event)
    }

    /// It filters by what an event says, never by its level: the level filter beside it gives
    /// the hint (with none here, the two together would give none).
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The offline commands print a report of everything they find: logging what the provider
    // warns of too would say each refused file twice more. Errors still show.
    let default_level = match cli.command {
        Command::Check { .. } | Command::Explain { .. } => "error",
        Command::Run(_) | Command::Echo { .. } => "info",
    };
    init_logging(&cli.log_format, default_level);
    // Pingora and kube each bring rustls with a different crypto provider; with both linked,
    // rustls refuses to guess, so the process picks one before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Check {
            dir,
            json,
            compile: args,
        } => check(&dir, json, &args),
        Command::Run(args) => run(args),
        Command::Echo { listen, name } => echo(listen, name),
        Command::Explain {
            config_dir,
            listener,
            host,
            path,
            method,
            headers,
            compile: args,
        } => {
            let headers = headers
                .iter()
                .map(|h| portcullis::routing::explain::parse_header(h))
                .collect::<Result<Vec<_>, _>>();
            let question = headers.map(|headers| portcullis::routing::explain::Question {
                listener,
                host,
                path,
                method,
                headers,
            });
            match question.and_then(|q| q.check().map(|()| q)) {
                Ok(question) => explain(&config_dir, &question, &args),
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// `println!` for the offline commands' reports, without its panic when the reader has gone
/// (`portcullis check DIR | head`): the rest of the report is dropped and the exit status
/// still says what was found.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

fn check(dir: &std::path::Path, json: bool, args: &CompileArgs) -> ExitCode {
    let store = Store::new();
    let mut provider = DirectoryProvider::new(dir, store.clone());
    // With --json, a check that cannot start still answers in JSON on stdout, for whatever
    // reads it, and in words on stderr.
    let fatal = |message: String, code: ExitCode| {
        if json {
            out!("{}", serde_json::json!({ "error": message }));
        }
        eprintln!("error: {message}");
        code
    };
    if let Err(err) = provider.sync() {
        return fatal(
            format!("cannot read {}: {err}", dir.display()),
            ExitCode::from(2),
        );
    }
    let snapshot = store.snapshot();
    let compiled = compile(&snapshot, &args.options());
    let report = compiled.report;
    if snapshot.is_empty() && report.errors.is_empty() {
        return fatal(
            format!(
                "no Gateway API objects under {}: the directory holds no *.yaml, *.yml or \
                 *.json file with a document of a kind Portcullis reads",
                dir.display()
            ),
            ExitCode::FAILURE,
        );
    }
    let unserved = portcullis::routing::unserved(&snapshot, &report, &args.options());
    // A process scoped to one Gateway serves nothing when that Gateway is not served: the
    // class alone, accepted, would otherwise pass.
    let scope_error = args.gateway.as_ref().and_then(|only| {
        let served = (report.objects.iter())
            .any(|o| o.kind == Kind::Gateway && format!("{}/{}", o.namespace, o.name) == *only);
        (!served).then(|| {
            format!(
                "nothing under {} is served: --gateway {only} names no Gateway served there",
                dir.display()
            )
        })
    });
    if json {
        // The report, with what is not served and why the check fails (when it does for
        // something the report does not hold), for a reader of the JSON alone.
        let mut answer = serde_json::to_value(&report).unwrap_or_default();
        answer["notServed"] = serde_json::json!(unserved);
        if let Some(error) = &scope_error {
            answer["error"] = serde_json::json!(error);
        }
        out!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    } else {
        let mut refused_files = Vec::new();
        for e in &report.errors {
            out!("ERROR {}: {}", e.source, e.message);
            // A file with a document that cannot be read is taken whole or not at all: its
            // good documents are missing from what follows too, and would otherwise seem lost.
            let unreadable = ["document ", "YAML", "file is ", "cannot read file"]
                .iter()
                .any(|start| e.message.starts_with(start));
            if unreadable && !refused_files.contains(&&e.source) {
                refused_files.push(&e.source);
            }
        }
        for file in refused_files {
            out!("  nothing in {file} is loaded: a file is taken whole or not at all");
        }
        for o in &report.objects {
            let id = if o.namespace.is_empty() {
                o.name.clone()
            } else {
                format!("{}/{}", o.namespace, o.name)
            };
            out!("{} {id} (generation {})", o.kind, o.generation);
            print_conditions("  ", &o.status["conditions"]);
            for l in o.status["listeners"].as_array().into_iter().flatten() {
                out!(
                    "  listener {} (attachedRoutes {})",
                    l["name"].as_str().unwrap_or(""),
                    l["attachedRoutes"]
                );
                print_conditions("    ", &l["conditions"]);
            }
            for p in o.status["parents"].as_array().into_iter().flatten() {
                let r = &p["parentRef"];
                out!(
                    "  parent {}/{}{}",
                    r["namespace"].as_str().unwrap_or(""),
                    r["name"].as_str().unwrap_or(""),
                    r["sectionName"]
                        .as_str()
                        .map(|s| format!(" section {s}"))
                        .unwrap_or_default()
                );
                print_conditions("    ", &p["conditions"]);
            }
            for a in o.status["ancestors"].as_array().into_iter().flatten() {
                let r = &a["ancestorRef"];
                out!(
                    "  ancestor {}/{}",
                    r["namespace"].as_str().unwrap_or(""),
                    r["name"].as_str().unwrap_or("")
                );
                print_conditions("    ", &a["conditions"]);
            }
        }
    }
    // Not a failure (a shared directory may hold other controllers' objects), but said: a
    // misspelt class or parent name otherwise makes objects vanish without a word.
    for u in &unserved {
        if json {
            eprintln!("not served: {u}");
        } else {
            out!("NOT SERVED {u}");
        }
    }
    if let Some(error) = scope_error {
        eprintln!("error: {error} (see NOT SERVED above)");
        return ExitCode::FAILURE;
    }
    if report.objects.is_empty() {
        // A GatewayClass in a refused file is not loaded: say so rather than deny it is there.
        let (which, refused) = if report.errors.is_empty() {
            ("there", String::new())
        } else {
            (
                "that loaded",
                format!(
                    " ({} error(s) above: a class in a refused file is not read)",
                    report.errors.len()
                ),
            )
        };
        eprintln!(
            "error: nothing under {} is served: no GatewayClass {which} names controller \
             {:?}{refused}",
            dir.display(),
            args.options().controller_name
        );
        return ExitCode::FAILURE;
    }
    let problems = report.problems();
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} problem(s):", problems.len());
        for p in problems {
            eprintln!("  {p}");
        }
        ExitCode::FAILURE
    }
}

fn explain(
    dir: &std::path::Path,
    question: &portcullis::routing::explain::Question,
    args: &CompileArgs,
) -> ExitCode {
    let store = Store::new();
    if let Err(err) = DirectoryProvider::new(dir, store.clone()).sync() {
        eprintln!("error: cannot read {}: {err}", dir.display());
        return ExitCode::from(2);
    }
    let compiled = compile(&store.snapshot(), &args.options());
    // What was refused cannot match: said first, as the answer may hinge on it.
    for e in &compiled.report.errors {
        eprintln!("warning: {}: {}", e.source, e.message);
    }
    let answer = question.answer(&compiled.table, &compiled.report);
    for step in &answer.steps {
        out!("{step}");
    }
    match answer.matched {
        Some(rule) => {
            match answer.status {
                Some(status) => out!("=> {rule}, answered by the gateway ({status})"),
                None => out!("=> {rule}"),
            }
            ExitCode::SUCCESS
        }
        None => {
            out!("=> no match (404)");
            ExitCode::FAILURE
        }
    }
}

fn print_conditions(indent: &str, conditions: &serde_json::Value) {
    for c in conditions.as_array().into_iter().flatten() {
        out!(
            "{indent}{}={} {}: {}",
            c["type"].as_str().unwrap_or(""),
            c["status"].as_str().unwrap_or(""),
            c["reason"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        );
    }
}

fn echo(listen: SocketAddr, name: String) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| rt.block_on(portcullis::demo::serve(listen, name)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: echo backend on {listen}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    let mut builder = if threads == 1 {
        // One thread: a multi-threaded runtime would still pass work between the thread that
        // runs the compile loop and its one worker, waking each other across threads.
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        tracing::info!(threads, "serving threads");
        let options = RunOptions {
            compile: args.compile.options(),
            admin_addr: args.admin_addr,
            drain_timeout: args.drain_timeout,
            request_header_timeout: args.request_header_timeout,
            access_log_sample: args.access_log_sample,
            request_metrics: args.request_metrics,
            upstream_idle_connections: usize::try_from(args.upstream_idle_connections)
                .expect("at most 1000000"),
            status_reports: None,
            initial_sync: None,
            stopping: None,
        };
        let Some(config_dir) = args.config_dir else {
            return portcullis::controller::kubernetes::run(args.kubernetes, options).await;
        };
        let store = Store::new();
        let mut provider = DirectoryProvider::new(&config_dir, store.clone());
        provider.sync().map_err(|e| {
            anyhow::anyhow!("cannot read --config-dir {}: {e}", config_dir.display())
        })?;
        tokio::spawn(provider.run());
        dataplane::run(store, options).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "gateway stopped");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_port_map, written_filter};
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::layer::Filter;

    /// The writer's filter keeps `PORTCULLIS_LOG`'s most verbose level as its hint, which
    /// becomes the `log` crate's maximum level: below it, Pingora's log calls cost nothing.
    #[test]
    fn the_log_filter_tells_its_most_verbose_level() {
        let hint = |text: &str| {
            let filter = written_filter::<tracing_subscriber::Registry>(
                tracing_subscriber::EnvFilter::new(text),
            );
            filter.max_level_hint()
        };
        assert_eq!(hint("info"), Some(LevelFilter::INFO));
        assert_eq!(hint("warn,pingora_proxy=debug"), Some(LevelFilter::DEBUG));
        assert_eq!(hint("trace"), Some(LevelFilter::TRACE));
    }

    #[test]
    fn a_port_map_gives_each_listener_port_its_own_socket_port() {
        let map = parse_port_map("80=8080, 443=8443").unwrap();
        assert_eq!(map.0.get(&443), Some(&8443));
        assert_eq!(
            parse_port_map("80=8080,81=8080").err().as_deref(),
            Some(
                "81=8080: listener ports 80 and 81 are both mapped to socket port 8080; give \
                 each its own"
            )
        );
        assert!(parse_port_map("80=8080,80=9090")
            .unwrap_err()
            .contains("listener port 80 is mapped twice"));
        assert!(parse_port_map("80=0").unwrap_err().contains("not a port"));
    }
}
