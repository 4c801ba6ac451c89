//! Gateway API conformance runner: drives the real `portcullis` binary through the Gateway API
//! v1.6.1 conformance scenarios, restated as data in `../shared/conformance` (override with
//! `PORTCULLIS_CONFORMANCE_DIR`).
//!
//! ```text
//! cargo test --locked --test conformance                              # the tests in scope
//! cargo test --locked --test conformance -- HTTPRouteSimpleSameNamespace
//! PORTCULLIS_CONFORMANCE_ALL=1 cargo test --locked --test conformance # every test
//! ```
//!
//! It starts echo backends, one gateway process for the whole run, and runs each selected test
//! in turn from a fresh configuration (base.yaml plus the test's manifests). It prints a table of
//! tests and the line `N passed, M failed, K skipped`, and exits non-zero when a test in scope
//! failed. Free arguments select tests by substring (`--exact` for whole names, `--skip` to leave
//! some out); `--list` lists them.

// The report is this program's output.
#![allow(clippy::print_stdout)]

mod cases;
mod certs;
mod client;
mod echo;
mod gateway;
mod judge;
mod manifests;
mod run;
mod scope;
mod selfcheck;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use crate::cases::{Suite, Test};
use crate::echo::Echoes;
use crate::gateway::Gateway;
use crate::run::Runner;

/// One test may take this long; beyond it the test fails. A passing test takes seconds; this
/// leaves room for a slow traffic split or mirror check.
const TEST_TIMEOUT: Duration = Duration::from_secs(150);
/// The whole run stops starting tests after this, so that CI stays bounded; tests left are
/// reported as failed.
const RUN_BUDGET: Duration = Duration::from_secs(12 * 60);
/// The Service whose echo the self-check talks to.
const SELFCHECK_BACKEND: (&str, &str) = ("gateway-conformance-infra", "infra-backend-v1");

/// The command line, read the way libtest reads it so that `cargo test` arguments fit.
#[derive(Default)]
struct Args {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    list: bool,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Args {
        let mut out = Args::default();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--exact" => out.exact = true,
                "--list" => out.list = true,
                "--skip" => out.skips.extend(args.next()),
                // libtest options that take a value; their value is not a filter.
                "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" => {
                    args.next();
                }
                a if a.starts_with('-') => {}
                _ => out.filters.push(arg),
            }
        }
        out
    }

    fn selects(&self, name: &str) -> bool {
        let matches = |f: &String| {
            if self.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skips.iter().any(|s| name.contains(s.as_str()))
    }
}

enum Outcome {
    Pass(Duration),
    Fail(String),
    Skip(String),
}

struct TestResult<'a> {
    test: &'a Test,
    outcome: Outcome,
}

fn main() -> ExitCode {
    let args = Args::parse(std::env::args().skip(1));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conformance: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

fn data_dir() -> PathBuf {
    match std::env::var_os("PORTCULLIS_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"),
    }
}

async fn run(args: Args) -> ExitCode {
    let run_all = std::env::var("PORTCULLIS_CONFORMANCE_ALL").is_ok_and(|v| v == "1");
    let dir = data_dir();
    let suite = match Suite::load(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("conformance: {e}");
            return ExitCode::FAILURE;
        }
    };
    let selected: Vec<&Test> = suite
        .tests
        .iter()
        .filter(|t| args.selects(&t.name))
        .collect();
    if args.list {
        for t in &selected {
            println!("{}: test", t.name);
        }
        return ExitCode::SUCCESS;
    }
    if let Err(e) = selfcheck::pure() {
        eprintln!("conformance: runner self-check failed: {e}");
        return ExitCode::FAILURE;
    }

    // Decide what runs before starting anything.
    let mut results: Vec<TestResult<'_>> = Vec::new();
    let mut to_run = Vec::new();
    for test in &selected {
        let own = test
            .manifests
            .iter()
            .filter(|m| *m != "base.yaml")
            .cloned()
            .collect::<Vec<_>>();
        let own_docs = match manifests::load(&dir, &own) {
            Ok(d) => d,
            Err(e) => {
                results.push(TestResult {
                    test,
                    outcome: Outcome::Fail(e),
                });
                continue;
            }
        };
        let needs = scope::needs(test, &suite, &own_docs);
        let skip = scope::not_applicable(test)
            .or_else(|| scope::skip_reason(&needs, run_all).map(str::to_string));
        match skip {
            Some(reason) => results.push(TestResult {
                test,
                outcome: Outcome::Skip(reason),
            }),
            None => to_run.push(*test),
        }
    }

    let mut kept_workdir = None;
    if !to_run.is_empty() {
        match start_and_run(&suite, &dir, &to_run).await {
            Ok((ran, workdir)) => {
                results.extend(ran);
                kept_workdir = workdir;
            }
            Err(e) => {
                eprintln!("conformance: {e}");
                for test in to_run {
                    results.push(TestResult {
                        test,
                        outcome: Outcome::Fail(format!("not run: {e}")),
                    });
                }
            }
        }
    }

    // Report in the data's order.
    let order = |t: &Test| suite.tests.iter().position(|x| x.name == t.name);
    results.sort_by_key(|r| order(r.test));
    print_report(&results);
    if let Some(dir) = kept_workdir {
        println!("gateway log and configuration kept in {}", dir.display());
    }
    let passed = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Pass(_)))
        .count();
    let failed = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .count();
    let skipped = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Skip(_)))
        .count();
    println!();
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    // Skipped tests never run, so every failure is a test in scope (all of them with
    // PORTCULLIS_CONFORMANCE_ALL=1).
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Starts the echoes and the gateway, runs `tests`, stops the gateway. Returns the results and,
/// when something failed, the kept work directory (gateway log and last configuration).
async fn start_and_run<'a>(
    suite: &Suite,
    dir: &Path,
    tests: &[&'a Test],
) -> Result<(Vec<TestResult<'a>>, Option<PathBuf>), String> {
    let echoes = Echoes::start(&suite.backends)
        .await
        .map_err(|e| format!("cannot start the echo backends: {e}"))?;
    selfcheck::echoes(&echoes, SELFCHECK_BACKEND.0, SELFCHECK_BACKEND.1)
        .await
        .map_err(|e| format!("runner self-check of the echo backends failed: {e}"))?;
    let secrets = certs::generate(&suite.generated_secrets)
        .map_err(|e| format!("cannot make the generated certificates: {e}"))?;
    let workdir = tempfile::Builder::new()
        .prefix("portcullis-conformance-")
        .tempdir()
        .map_err(|e| format!("cannot make a work directory: {e}"))?;
    let binary = Path::new(env!("CARGO_BIN_EXE_portcullis"));
    let gateway = Gateway::start(binary, workdir.path()).await?;
    let mut runner = Runner {
        data_dir: dir.to_path_buf(),
        echoes,
        gateway,
        secrets,
    };
    let started = Instant::now();
    let mut results = Vec::new();
    for test in tests {
        let outcome = if started.elapsed() > RUN_BUDGET {
            Outcome::Fail(format!(
                "not run: the run's {}-minute budget was spent",
                RUN_BUDGET.as_secs() / 60
            ))
        } else if let Err(e) = runner.gateway.check_alive() {
            Outcome::Fail(format!("not run: {e}"))
        } else {
            let t0 = Instant::now();
            // A panic in the runner fails this test only; the gateway is still killed on drop
            // if it unwinds further.
            let attempt = AssertUnwindSafe(runner.run_test(test)).catch_unwind();
            match tokio::time::timeout(TEST_TIMEOUT, attempt).await {
                Ok(Ok(Ok(()))) => Outcome::Pass(t0.elapsed()),
                Ok(Ok(Err(e))) => Outcome::Fail(e),
                Ok(Err(panic)) => {
                    Outcome::Fail(format!("runner panicked: {}", panic_message(&panic)))
                }
                Err(_) => {
                    Outcome::Fail(format!("did not finish within {}s", TEST_TIMEOUT.as_secs()))
                }
            }
        };
        let line = match &outcome {
            Outcome::Pass(d) => format!("PASS {} ({:.1}s)", test.name, d.as_secs_f64()),
            Outcome::Fail(e) => format!("FAIL {}: {e}", test.name),
            Outcome::Skip(r) => format!("SKIP {}: {r}", test.name),
        };
        eprintln!("{line}");
        results.push(TestResult { test, outcome });
    }
    runner.gateway.stop().await;
    let failed = results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Fail(_)));
    let kept = failed.then(|| workdir.keep());
    Ok((results, kept))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".to_string())
}

fn print_report(results: &[TestResult<'_>]) {
    let width = results
        .iter()
        .map(|r| r.test.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!();
    println!(
        "{:<width$}  {:<10}  {:<8}  {:<6}  detail",
        "test", "kind", "support", "result"
    );
    for r in results {
        let (result, detail) = match &r.outcome {
            Outcome::Pass(d) => ("PASS", format!("{:.1}s", d.as_secs_f64())),
            Outcome::Fail(e) => ("FAIL", e.clone()),
            Outcome::Skip(reason) => ("SKIP", reason.clone()),
        };
        println!(
            "{:<width$}  {:<10}  {:<8}  {:<6}  {}",
            r.test.name, r.test.route_kind, r.test.support, result, detail
        );
    }
}
