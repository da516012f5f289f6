//! A control API client: what `hvprobe call` / `hvprobe attach` and the tests use. Every wait
//! has a timeout; notifications (events) that arrive while waiting for a response are kept
//! for [`Client::notification`].

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::protocol;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("Cannot connect to {path}: {reason} (is `hvprobe run --api-socket {path}` running?)")]
    Connect {
        /// The socket.
        path: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{message} (code {code})")]
    Rpc {
        /// The JSON-RPC error code.
        code: i64,
        /// The server's message.
        message: String,
    },
    /// No answer in time.
    #[error("No answer from the server within {0:?}")]
    Timeout(Duration),
    /// The connection broke.
    #[error("The server closed the connection")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("Socket: {0}")]
    Io(String),
    /// The server sent something that is not JSON-RPC.
    #[error("The server sent an unreadable line: {0}")]
    Garbled(String),
}

/// A connection to `hvprobe run --api-socket PATH`.
pub struct Client {
    stream: UnixStream,
    /// Bytes received and not yet taken as lines.
    pending: Vec<u8>,
    /// A descriptor that came with the received bytes (`mem.memfd`).
    received_fd: Option<std::fs::File>,
    next_id: u64,
    notifications: VecDeque<Value>,
    timeout: Duration,
}

impl Client {
    /// Connects; `timeout` bounds every later wait.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| ClientError::Connect {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let io = |e: std::io::Error| ClientError::Io(e.to_string());
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        Ok(Client {
            stream,
            pending: Vec::new(),
            received_fd: None,
            next_id: 1,
            notifications: VecDeque::new(),
            timeout,
        })
    }

    /// Sends raw bytes (tests of bad input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream
            .write_all(bytes)
            .map_err(|e| ClientError::Io(e.to_string()))
    }

    /// Reads the next line as JSON, waiting until `deadline`. Lines are bounded like the
    /// server's ([`protocol::MAX_LINE`]); a descriptor sent with the bytes is kept.
    pub fn read_value(&mut self, deadline: Instant) -> Result<Value, ClientError> {
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                let line = &line[..line.len() - 1];
                return serde_json::from_slice(line).map_err(|e| {
                    ClientError::Garbled(format!("{e}: {}", String::from_utf8_lossy(line)))
                });
            }
            if self.pending.len() > protocol::MAX_LINE {
                return Err(ClientError::Garbled("a line over 1 MiB".into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(self.timeout));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| ClientError::Io(e.to_string()))?;
            let mut buf = vec![0u8; 64 * 1024];
            let got = if self.received_fd.is_none() {
                self.stream.recv_with_fd(&mut buf).map(|(n, fd)| {
                    if fd.is_some() {
                        self.received_fd = fd;
                    }
                    n
                })
            } else {
                (&self.stream).read(&mut buf).map_err(|e| {
                    vmm_sys_util::errno::Error::new(e.raw_os_error().unwrap_or(libc::EIO))
                })
            };
            match got {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EWOULDBLOCK => {
                    return Err(ClientError::Timeout(self.timeout));
                }
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) => return Err(ClientError::Io(e.to_string())),
            }
        }
    }

    /// `mem.memfd`: a read-only descriptor of guest RAM and the result (its layout).
    pub fn memfd(&mut self) -> Result<(Value, std::fs::File), ClientError> {
        self.received_fd = None;
        let v = self.call("mem.memfd", json!({}))?;
        let fd = self
            .received_fd
            .take()
            .ok_or_else(|| ClientError::Garbled("mem.memfd came without a descriptor".into()))?;
        Ok((v, fd))
    }

    /// Calls `method` with `params` and waits for its response.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
            .to_string()
            .into_bytes();
        line.push(b'\n');
        self.send_raw(&line)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let v = self.read_value(deadline)?;
            if v.get("id").is_none() && v.get("method").is_some() {
                self.notifications.push_back(v);
                continue;
            }
            if v.get("id") != Some(&json!(id)) {
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(ClientError::Rpc {
                    code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("(no message)")
                        .to_string(),
                });
            }
            return Ok(v.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    /// The next notification (an event), waiting up to `wait`.
    pub fn notification(&mut self, wait: Duration) -> Result<Value, ClientError> {
        if let Some(n) = self.notifications.pop_front() {
            return Ok(n);
        }
        let deadline = Instant::now() + wait;
        loop {
            let v = self.read_value(deadline)?;
            if v.get("id").is_none() && v.get("method").is_some() {
                return Ok(v);
            }
        }
    }
}
