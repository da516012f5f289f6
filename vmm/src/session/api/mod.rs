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
pub mod verbs;

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

    /// Whether the client is gone.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }
}

/// Extra methods that need the connection (event subscriptions): the server calls this
/// before [`methods::call`]; `None` means "not mine".
pub type ConnMethods = Arc<
    dyn Fn(&Session, ClientId, &ClientWriter, &str, &Value) -> Option<Result<Value, RpcError>>
        + Send
        + Sync,
>;

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
    pub fn spawn(
        path: &Path,
        session: Arc<Session>,
        extra: Option<ConnMethods>,
    ) -> Result<ApiServer, ApiError> {
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
            .spawn(move || accept_loop(&listener, &session, extra, &stop2, &clients2))
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
    extra: Option<ConnMethods>,
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
                let (session, extra, clients) = (session.clone(), extra.clone(), clients.clone());
                if let Ok(t) = std::thread::Builder::new()
                    .name(format!("api-client-{id}"))
                    .spawn(move || {
                        serve_client(&session, extra.as_ref(), id, stream);
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

fn serve_client(session: &Session, extra: Option<&ConnMethods>, id: ClientId, stream: UnixStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let writer = ClientWriter {
        stream: Arc::new(Mutex::new(write_half)),
        gone: Arc::new(AtomicBool::new(false)),
    };
    let mut reader = BufReader::new(stream);
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
            Ok(Line::Eof) | Err(_) => return,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let run = |r: protocol::Request| -> Option<Value> {
            let out = extra
                .and_then(|f| f(session, id, &writer, &r.method, &r.params))
                .unwrap_or_else(|| methods::call(session, id, &r.method, &r.params));
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
}
