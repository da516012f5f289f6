//! A control API client: what `hvprobe call` / `hvprobe attach` and the tests use. Every wait
//! has a timeout; notifications (events) that arrive while waiting for a response are kept
//! for [`Client::notification`].

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::protocol::{self, Line};

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
    writer: UnixStream,
    reader: BufReader<UnixStream>,
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
        let reader = BufReader::new(stream.try_clone().map_err(io)?);
        Ok(Client {
            writer: stream,
            reader,
            next_id: 1,
            notifications: VecDeque::new(),
            timeout,
        })
    }

    /// Sends raw bytes (tests of bad input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer
            .write_all(bytes)
            .map_err(|e| ClientError::Io(e.to_string()))
    }

    /// Reads the next line as JSON, waiting until `deadline`.
    pub fn read_value(&mut self, deadline: Instant) -> Result<Value, ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout(self.timeout));
        }
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| ClientError::Io(e.to_string()))?;
        match protocol::read_line(&mut self.reader) {
            Ok(Line::Full(l)) => serde_json::from_slice(&l)
                .map_err(|e| ClientError::Garbled(format!("{e}: {}", String::from_utf8_lossy(&l)))),
            Ok(Line::TooLong) => Err(ClientError::Garbled("a line over 1 MiB".into())),
            Ok(Line::Eof) => Err(ClientError::Closed),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                Err(ClientError::Timeout(self.timeout))
            }
            Err(e) => Err(ClientError::Io(e.to_string())),
        }
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
