//! The client verbs of the `hvprobe` binary (the CLI layer, over the control API's client): `hvprobe call SOCKET METHOD [PARAMS]` and
//! `hvprobe attach SOCKET --probe ... [--events FILE] [--duration SECS]`.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::AttachArgs;
use crate::outcome::{EXIT_BAD_INPUT, EXIT_VMM_FAILURE};
use crate::session::api::client::{Client, ClientError};
use crate::session::api::protocol;

/// Why a verb failed.
#[derive(Debug, thiserror::Error)]
pub enum VerbError {
    /// The client failed (connection, timeout, a refused request).
    #[error("{0}")]
    Client(#[from] ClientError),
    /// A request of the verb was refused, named.
    #[error("{what}: {source}")]
    Refused {
        /// What was asked (`--probe foo`).
        what: String,
        /// The server's answer.
        #[source]
        source: ClientError,
    },
    /// The events output failed.
    #[error("Cannot write events to {path}: {reason}")]
    Output {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl VerbError {
    /// The process exit status: 64 when the server refused the request (bad method,
    /// parameters, a probe it cannot place), 70 when it could not be reached or answered.
    pub fn exit_code(&self) -> u8 {
        let client = match self {
            VerbError::Client(c) | VerbError::Refused { source: c, .. } => c,
            VerbError::Output { .. } => return EXIT_BAD_INPUT,
        };
        match client {
            ClientError::Rpc { code, .. } if *code != protocol::INTERNAL_ERROR => EXIT_BAD_INPUT,
            _ => EXIT_VMM_FAILURE,
        }
    }
}

/// `hvprobe call`: one method, its result pretty-printed on stdout.
pub fn call(
    socket: &Path,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<(), VerbError> {
    let mut c = Client::connect(socket, timeout)?;
    let result = c.call(method, params)?;
    let text = serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string());
    let _ = writeln!(std::io::stdout(), "{text}");
    Ok(())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_sigint() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the cast to
    // sighandler_t is how libc's signal() takes a handler.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// `hvprobe attach`: adds the flags' items (owned by this connection), streams their events
/// as JSON lines, then detaches and prints their rows of the table on stderr.
pub fn attach(args: &AttachArgs) -> Result<(), VerbError> {
    let timeout = Duration::from_secs(30);
    let mut c = Client::connect(&args.socket, timeout)?;
    let mut out: Box<dyn Write> = match &args.events {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |e| VerbError::Output {
                path: p.display().to_string(),
                reason: e.to_string(),
            },
        )?)),
        None => Box::new(std::io::stdout()),
    };
    let mut ids = Vec::new();
    let mut add = |c: &mut Client, method: &str, key: &str, value: &str, flag: &str| {
        c.call(method, json!({key: value, "keep": args.keep}))
            .map(|r| ids.push(r["id"].as_u64().unwrap_or(u64::MAX)))
            .map_err(|source| VerbError::Refused {
                what: format!("--{flag} {value}"),
                source,
            })
    };
    for h in &args.hbreak {
        add(&mut c, "hbreak.add", "at", h, "hbreak")?;
    }
    for w in &args.watch {
        add(&mut c, "watch.add", "spec", w, "watch")?;
    }
    for p in &args.probe {
        add(&mut c, "probe.add", "spec", p, "probe")?;
    }
    let mut traces = Vec::new();
    for t in &args.mmiotrace {
        let r = c
            .call("trace.add", json!({"target": t, "keep": args.keep}))
            .map_err(|source| VerbError::Refused {
                what: format!("--mmiotrace {t}"),
                source,
            })?;
        traces.push(r["id"].as_u64().unwrap_or(u64::MAX));
    }
    if !ids.is_empty() {
        c.call("events.subscribe", json!({"sources": ids}))?;
    }
    if !traces.is_empty() {
        c.call(
            "events.subscribe",
            json!({"kinds": ["access", "map", "unmap", "mark", "pcidev"]}),
        )?;
    }
    catch_sigint();
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d.min(31_536_000.0)));
    let mut written = 0u64;
    let ended = loop {
        if INTERRUPTED.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break false;
        }
        match c.notification(Duration::from_millis(200)) {
            Ok(n) => {
                if let Some(ev) = n.get("params").and_then(|p| p.get("event")) {
                    if writeln!(out, "{ev}").is_err() {
                        break false;
                    }
                    written += 1;
                }
            }
            Err(ClientError::Timeout(_)) => {}
            Err(ClientError::Closed) => break true,
            Err(e) => return Err(e.into()),
        }
    };
    let _ = out.flush();
    if ended {
        let _ = writeln!(std::io::stderr(), "hvprobe: the VM ended; {written} events");
        return Ok(());
    }
    let list = c.call("list", json!({}))?;
    if !args.keep {
        for id in &ids {
            let _ = c.call("remove", json!({"id": id}));
        }
        for id in &traces {
            let _ = c.call("trace.remove", json!({"id": id}));
        }
    }
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "{:<28} {:>10} {:>8} {:>6}",
        "source", "hits", "nmissed", "lost"
    );
    for item in list.as_array().into_iter().flatten() {
        if ids.iter().any(|i| item["id"] == json!(i)) {
            let _ = writeln!(
                err,
                "{:<28} {:>10} {:>8} {:>6}",
                item["name"].as_str().unwrap_or("?"),
                item["hits"],
                item["nmissed"],
                item["lost"]
            );
        }
    }
    let _ = writeln!(
        err,
        "hvprobe: detached after {written} events{}",
        if args.keep { " (items kept)" } else { "" }
    );
    Ok(())
}
