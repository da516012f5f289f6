//! The control API: JSON-RPC 2.0 over a Unix socket (`hvprobe run --api-socket PATH`), one
//! request, response or notification per line, as QEMU's QMP and Firecracker's and Cloud
//! Hypervisor's API sockets do.
//!
//! ```text
//! listener thread --accept--> one thread per client: read a line (<= 1 MiB) -> parse
//!   -> methods::call(session, client, ...) -> response line (writes time out after 5 s)
//!   events.subscribe -> a forwarder thread: subscription queue -> notification lines
//! client gone (EOF, error, write timeout) -> Session::client_gone: its probes, breakpoints,
//!   watchpoints and subscriptions go away unless added with "keep"; its pause is undone
//! ```
//!
//! The socket is created mode 0600 (only its owner may connect) and removed when the server
//! stops. Bad input of any kind gets a JSON-RPC error and the VM keeps running; a client that
//! stops reading is disconnected when a write times out, and never stalls a vCPU (events reach
//! it through a bounded queue that drops and counts).

pub mod client;
pub mod methods;
pub mod protocol;

use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::{ClientId, Session};
use protocol::{Incoming, Line, RpcError};

/// How long a write to a client may block before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Something already listens there.
    #[error("{0}: another process is serving this socket; choose another --api-socket path")]
    InUse(String),
    /// A non-socket file is in the way.
    #[error("{0} exists and is not a socket: remove it or choose another --api-socket path")]
    NotASocket(String),
    /// Binding or setting it up failed.
    #[error("Cannot serve {path}: {reason}")]
    Bind {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connected client's writing side (responses and notifications share it).
#[derive(Clone)]
pub struct ClientWriter {
    stream: Arc<Mutex<UnixStream>>,
    gone: Arc<AtomicBool>,
}

impl ClientWriter {
    /// Writes one JSON value as a line. A failed or timed-out write marks the client gone
    /// (its reader then ends the connection).
    pub fn send(&self, v: &Value) -> bool {
        if self.gone.load(Ordering::Relaxed) {
            return false;
        }
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        let ok = lock(&self.stream).write_all(&line).is_ok();
        if !ok {
            self.gone.store(true, Ordering::Relaxed);
            let _ = lock(&self.stream).shutdown(std::net::Shutdown::Both);
        }
        ok
    }

    /// Writes one JSON value as a line with `fd` attached (SCM_RIGHTS) to its first byte.
    pub fn send_with_fd(&self, v: &Value, fd: &std::fs::File) -> bool {
        use std::os::fd::AsRawFd;
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        if self.gone.load(Ordering::Relaxed) {
            return false;
        }
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        let stream = lock(&self.stream);
        let ok = match stream.send_with_fd(&line[..], fd.as_raw_fd()) {
            Ok(n) => (&*stream).write_all(&line[n.min(line.len())..]).is_ok(),
            Err(_) => false,
        };
        if !ok {
            self.gone.store(true, Ordering::Relaxed);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        ok
    }

    /// Writes lines already encoded (each ending in a newline).
    pub fn send_bytes(&self, lines: &[u8]) -> bool {
        if self.gone.load(Ordering::Relaxed) {
            return false;
        }
        let ok = lock(&self.stream).write_all(lines).is_ok();
        if !ok {
            self.gone.store(true, Ordering::Relaxed);
            let _ = lock(&self.stream).shutdown(std::net::Shutdown::Both);
        }
        ok
    }

    /// Whether the client is gone.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }
}

/// A running control API server.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    clients: Arc<Mutex<Vec<(ClientId, UnixStream)>>>,
}

impl ApiServer {
    /// Serves `session` on a new Unix socket at `path` (mode 0600). A stale socket file (no
    /// server behind it) is replaced; a live one or a non-socket file is an error.
    pub fn spawn(path: &Path, session: Arc<Session>) -> Result<ApiServer, ApiError> {
        let shown = path.display().to_string();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(ApiError::NotASocket(shown));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ApiError::InUse(shown));
            }
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |e: std::io::Error| ApiError::Bind {
            path: shown.clone(),
            reason: e.to_string(),
        };
        // Mode 0600 from the start: bind under a umask that leaves the group and others out.
        // SAFETY: umask only changes this process's file-creation mask; it is restored right
        // after bind, and hvprobe creates no other files from other threads meanwhile that
        // would need group or other bits.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above; restores the previous mask.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(Mutex::new(Vec::new()));
        let (stop2, clients2) = (stop.clone(), clients.clone());
        let thread = std::thread::Builder::new()
            .name("api-listener".into())
            .spawn(move || accept_loop(&listener, &session, &stop2, &clients2))
            .map_err(bind_err)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
            clients,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, disconnects every client and removes the socket file.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, s) in lock(&self.clients).iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_now();
        }
    }
}

fn accept_loop(
    listener: &UnixListener,
    session: &Arc<Session>,
    stop: &AtomicBool,
    clients: &Arc<Mutex<Vec<(ClientId, UnixStream)>>>,
) {
    let next = AtomicU64::new(1);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                if let Ok(c) = stream.try_clone() {
                    lock(clients).push((id, c));
                }
                let (session, clients) = (session.clone(), clients.clone());
                if let Ok(t) = std::thread::Builder::new()
                    .name(format!("api-client-{id}"))
                    .spawn(move || {
                        serve_client(&session, id, stream);
                        lock(&clients).retain(|(c, _)| *c != id);
                        session.client_gone(id);
                    })
                {
                    threads.push(t);
                }
                threads.retain(|t| !t.is_finished());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for t in threads {
        let _ = t.join();
    }
}

fn serve_client(session: &Session, id: ClientId, stream: UnixStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let writer = ClientWriter {
        stream: Arc::new(Mutex::new(write_half)),
        gone: Arc::new(AtomicBool::new(false)),
    };
    let mut reader = BufReader::new(stream);
    let mut subs = Subscriptions::default();
    loop {
        if writer.is_gone() {
            return;
        }
        let line = match protocol::read_line(&mut reader) {
            Ok(Line::Full(l)) => l,
            Ok(Line::TooLong) => {
                writer.send(&protocol::error(
                    Value::Null,
                    &RpcError {
                        code: protocol::INVALID_REQUEST,
                        message: format!(
                            "A request line over {} bytes: dropped",
                            protocol::MAX_LINE
                        ),
                    },
                ));
                continue;
            }
            Ok(Line::Eof) | Err(_) => break,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut run = |r: protocol::Request| -> Option<Value> {
            let out = match r.method.as_str() {
                "events.subscribe" => subs.subscribe(session, &writer, &r.params),
                "events.unsubscribe" => subs.unsubscribe(&r.params),
                "mem.memfd" => {
                    // The answer carries the descriptor: it is sent here, not returned.
                    let rid = r.id.clone().unwrap_or(Value::Null);
                    match memfd_answer(session) {
                        Ok((v, fd)) => {
                            writer.send_with_fd(&protocol::result(rid, v), &fd);
                        }
                        Err(e) => {
                            writer.send(&protocol::error(rid, &e));
                        }
                    }
                    return None;
                }
                _ => methods::call(session, id, &r.method, &r.params),
            };
            let rid = r.id?;
            Some(match out {
                Ok(v) => protocol::result(rid, v),
                Err(e) => protocol::error(rid, &e),
            })
        };
        match protocol::parse_line(&line) {
            Incoming::Error(e) => {
                writer.send(&protocol::error(Value::Null, &e));
            }
            Incoming::One(Err((rid, e))) => {
                writer.send(&protocol::error(rid, &e));
            }
            Incoming::One(Ok(r)) => {
                if let Some(resp) = run(r) {
                    writer.send(&resp);
                }
            }
            Incoming::Batch(items) => {
                let out: Vec<Value> = items
                    .into_iter()
                    .filter_map(|i| match i {
                        Ok(r) => run(r),
                        Err((rid, e)) => Some(protocol::error(rid, &e)),
                    })
                    .collect();
                if !out.is_empty() {
                    writer.send(&Value::Array(out));
                }
            }
        }
    }
    subs.stop_all();
}

/// `mem.memfd`: a read-only descriptor of guest RAM (a reopening of its memfd through
/// /proc/self/fd with O_RDONLY, so the client can neither write nor map it writable) and the
/// layout of RAM in it.
fn memfd_answer(session: &Session) -> Result<(Value, std::fs::File), RpcError> {
    use std::os::fd::AsRawFd;
    let mem = session.memory();
    let path = format!("/proc/self/fd/{}", mem.memfd().as_raw_fd());
    let ro = std::fs::OpenOptions::new()
        .read(true)
        .open(&path)
        .map_err(|e| {
            RpcError::refused(format!("Cannot reopen guest RAM read-only ({path}): {e}"))
        })?;
    let regions: Vec<Value> = mem
        .memfd_layout()
        .into_iter()
        .map(|(gpa, len, offset)| {
            serde_json::json!({"gpa": format!("{:#x}", gpa.raw()), "len": format!("{len:#x}"), "offset": format!("{offset:#x}")})
        })
        .collect();
    Ok((
        serde_json::json!({"size": format!("{:#x}", mem.size()), "regions": regions}),
        ro,
    ))
}

/// The longest a subscription's queue gets before it drops (and counts) events.
pub const SUBSCRIPTION_QUEUE: usize = 1 << 16;

/// One connection's event subscriptions: each a forwarder thread from its hub queue to the
/// connection, as `event` notifications.
#[derive(Default)]
struct Subscriptions {
    next: u64,
    live: Vec<(u64, Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Subscriptions {
    /// `events.subscribe {"kinds": [...], "sources": [ids], "vcpus": [...]}` (all optional).
    fn subscribe(
        &mut self,
        session: &Session,
        writer: &ClientWriter,
        params: &Value,
    ) -> Result<Value, RpcError> {
        use introspect::events::{Filter, Kind, KindSet};
        let p = methods::Params::of(params)?;
        let list = |name: &str| -> Result<Option<Vec<&Value>>, RpcError> {
            match p.raw(name) {
                None => Ok(None),
                Some(Value::Array(a)) => Ok(Some(a.iter().collect())),
                Some(_) => Err(RpcError::params(format!("\"{name}\" must be an array"))),
            }
        };
        let kinds = match list("kinds")? {
            None => KindSet::ALL,
            Some(names) => {
                let mut ks = Vec::new();
                for n in names {
                    let k = n.as_str().and_then(Kind::from_name).ok_or_else(|| {
                        RpcError::params(format!(
                            "\"kinds\": {n} is not a kind (one of {})",
                            Kind::ALL
                                .iter()
                                .map(|k| k.name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                    ks.push(k);
                }
                KindSet::of(&ks)
            }
        };
        let mut filter = Filter::kinds(kinds);
        if let Some(ids) = list("sources")? {
            let sources = session.hub().sources();
            let mut chosen = Vec::new();
            for v in ids {
                let id = methods::parse_u64(v)
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| RpcError::params(format!("\"sources\": {v} is not an id")))?;
                let s = sources
                    .iter()
                    .map(|(s, _)| s)
                    .find(|s| s.index() == id)
                    .ok_or_else(|| {
                        RpcError::params(format!(
                            "\"sources\": no item has id {id} (list shows them)"
                        ))
                    })?;
                chosen.push(s);
            }
            filter = filter.with_sources(chosen);
        }
        if let Some(vs) = list("vcpus")? {
            let mut vcpus = Vec::new();
            for v in vs {
                vcpus.push(
                    methods::parse_u64(v)
                        .and_then(|i| u32::try_from(i).ok())
                        .ok_or_else(|| {
                            RpcError::params(format!("\"vcpus\": {v} is not a vCPU index"))
                        })?,
                );
            }
            filter = filter.with_vcpus(vcpus);
        }
        self.next += 1;
        let sub_id = self.next;
        let sub = session.hub().subscribe(filter, SUBSCRIPTION_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, writer2, sources) = (
            stop.clone(),
            writer.clone(),
            session.hub().sources().clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("api-events-{sub_id}"))
            .spawn(move || forward(&sub, sub_id, &writer2, &stop2, &sources))
            .map_err(|e| RpcError {
                code: protocol::INTERNAL_ERROR,
                message: format!("Cannot start the subscription's thread: {e}"),
            })?;
        self.live.push((sub_id, stop, thread));
        Ok(serde_json::json!({"subscription": sub_id}))
    }

    /// `events.unsubscribe {"subscription": N}`.
    fn unsubscribe(&mut self, params: &Value) -> Result<Value, RpcError> {
        let p = methods::Params::of(params)?;
        let id = p.u64("subscription")?;
        let i = self
            .live
            .iter()
            .position(|(s, _, _)| *s == id)
            .ok_or_else(|| RpcError::params(format!("No subscription {id} on this connection")))?;
        let (_, stop, thread) = self.live.remove(i);
        stop.store(true, Ordering::Relaxed);
        let _ = thread.join();
        Ok(serde_json::json!({}))
    }

    fn stop_all(&mut self) {
        for (_, stop, _) in &self.live {
            stop.store(true, Ordering::Relaxed);
        }
        for (_, _, t) in self.live.drain(..) {
            let _ = t.join();
        }
    }
}

/// Moves a subscription's events to its connection as `event` notifications, a batch at a
/// time, until it is stopped or the client is gone. Lost records (the queue was full because
/// the client read too slowly) go through like any event.
fn forward(
    sub: &introspect::events::Subscription,
    sub_id: u64,
    writer: &ClientWriter,
    stop: &AtomicBool,
    sources: &introspect::events::Sources,
) {
    let head = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":{{\"subscription\":{sub_id},\"event\":"
    );
    let mut batch = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(64 * 1024);
    while !stop.load(Ordering::Relaxed) && !writer.is_gone() {
        let Some(first) = sub.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        batch.clear();
        batch.push(first);
        sub.recv_batch(&mut batch);
        out.clear();
        for ev in &batch {
            out.extend_from_slice(head.as_bytes());
            let start = out.len();
            if introspect::events::Format::Jsonl
                .write_event(&mut out, ev, sources)
                .is_err()
            {
                out.truncate(start - head.len());
                continue;
            }
            while out.last() == Some(&b'\n') {
                out.pop();
            }
            out.extend_from_slice(b"}}\n");
        }
        if !writer.send_bytes(&out) {
            return;
        }
    }
}
