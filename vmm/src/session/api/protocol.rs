//! JSON-RPC 2.0 framing for the control API: one request, response or notification per line
//! (newline-delimited JSON), requests bounded in size, batches bounded in length, and the
//! standard error codes plus hvprobe's own.

use serde_json::{Value, json};

/// The longest request line accepted (bytes, newline excluded).
pub const MAX_LINE: usize = 1 << 20;

/// The most requests in one batch.
pub const MAX_BATCH: usize = 64;

/// Invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a JSON-RPC 2.0 request object.
pub const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// The parameters are wrong.
pub const INVALID_PARAMS: i64 = -32602;
/// hvprobe failed for a reason of its own.
pub const INTERNAL_ERROR: i64 = -32603;
/// The VM or the session refused (not paused, ended, a probe refused, memory not mapped...).
pub const REFUSED: i64 = -32000;

/// A JSON-RPC error: code and one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The code (the constants above).
    pub code: i64,
    /// What was wrong and what to do.
    pub message: String,
}

impl RpcError {
    /// Wrong parameters.
    pub fn params(message: impl Into<String>) -> Self {
        RpcError {
            code: INVALID_PARAMS,
            message: message.into(),
        }
    }

    /// Refused by the VM or session.
    pub fn refused(message: impl Into<String>) -> Self {
        RpcError {
            code: REFUSED,
            message: message.into(),
        }
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `None` for a notification (no response is sent).
    pub id: Option<Value>,
    /// The method name.
    pub method: String,
    /// The parameters (an empty object when absent).
    pub params: Value,
}

/// What one line held.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// One request (or notification).
    One(Result<Request, (Value, RpcError)>),
    /// A batch: each entry a request, or the error for an invalid entry (with its id).
    Batch(Vec<Result<Request, (Value, RpcError)>>),
    /// Nothing to answer but this error (with a null id).
    Error(RpcError),
}

fn parse_one(v: Value) -> Result<Request, (Value, RpcError)> {
    let id = v.get("id").cloned();
    let bad = |msg: &str| {
        (
            id.clone().unwrap_or(Value::Null),
            RpcError {
                code: INVALID_REQUEST,
                message: msg.to_string(),
            },
        )
    };
    let Value::Object(map) = &v else {
        return Err(bad("A request must be a JSON object"));
    };
    if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(bad("\"jsonrpc\" must be \"2.0\""));
    }
    if let Some(i) = &id
        && !(i.is_string() || i.is_number() || i.is_null())
    {
        return Err(bad("\"id\" must be a string, a number or null"));
    }
    let Some(method) = map.get("method").and_then(Value::as_str) else {
        return Err(bad("\"method\" must be a string"));
    };
    let params = match map.get("params") {
        None => json!({}),
        Some(p @ (Value::Object(_) | Value::Array(_))) => p.clone(),
        Some(_) => return Err(bad("\"params\" must be an object or an array")),
    };
    Ok(Request {
        id,
        method: method.to_string(),
        params,
    })
}

/// Parses one request line (without its newline).
pub fn parse_line(line: &[u8]) -> Incoming {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Incoming::Error(RpcError {
                code: PARSE_ERROR,
                message: format!("Not JSON: {e}"),
            });
        }
    };
    match v {
        Value::Array(items) if items.is_empty() => Incoming::Error(RpcError {
            code: INVALID_REQUEST,
            message: "An empty batch".into(),
        }),
        Value::Array(items) if items.len() > MAX_BATCH => Incoming::Error(RpcError {
            code: INVALID_REQUEST,
            message: format!(
                "A batch of {} requests is over the limit of {MAX_BATCH}",
                items.len()
            ),
        }),
        Value::Array(items) => Incoming::Batch(items.into_iter().map(parse_one).collect()),
        other => Incoming::One(parse_one(other)),
    }
}

/// A success response.
pub fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response.
pub fn error(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": e.code, "message": e.message}})
}

/// A notification from the server (events).
pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// Reading one line of at most [`MAX_LINE`] bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (newline removed).
    Full(Vec<u8>),
    /// The line was longer than the limit: it was read to its end and dropped.
    TooLong,
    /// The peer closed the connection.
    Eof,
}

/// Reads one newline-terminated line, never holding more than [`MAX_LINE`] bytes of it.
pub fn read_line(r: &mut impl std::io::BufRead) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let (done, used) = {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Ok(if line.is_empty() && !too_long {
                    Line::Eof
                } else if too_long {
                    Line::TooLong
                } else {
                    Line::Full(line)
                });
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    if !too_long && line.len() + i <= MAX_LINE {
                        line.extend_from_slice(&buf[..i]);
                    } else {
                        too_long = true;
                    }
                    (true, i + 1)
                }
                None => {
                    if !too_long && line.len() + buf.len() <= MAX_LINE {
                        line.extend_from_slice(buf);
                    } else {
                        too_long = true;
                        line = Vec::new();
                    }
                    (false, buf.len())
                }
            }
        };
        r.consume(used);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Full(line)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_notifications_and_batches() {
        let Incoming::One(Ok(r)) = parse_line(br#"{"jsonrpc":"2.0","id":7,"method":"vm.status"}"#)
        else {
            panic!()
        };
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(r.method, "vm.status");
        assert_eq!(r.params, json!({}));
        let Incoming::One(Ok(n)) = parse_line(br#"{"jsonrpc":"2.0","method":"vm.pause"}"#) else {
            panic!()
        };
        assert_eq!(n.id, None);
        let Incoming::Batch(b) = parse_line(
            br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"1.0","id":2,"method":"b"}]"#,
        ) else {
            panic!()
        };
        assert!(b[0].is_ok());
        let (id, e) = b[1].clone().unwrap_err();
        assert_eq!((id, e.code), (json!(2), INVALID_REQUEST));
    }

    #[test]
    fn bad_input_gets_the_standard_codes() {
        let code = |line: &[u8]| match parse_line(line) {
            Incoming::Error(e) => e.code,
            Incoming::One(Err((_, e))) => e.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(b"{not json"), PARSE_ERROR);
        assert_eq!(code(b"[]"), INVALID_REQUEST);
        assert_eq!(code(b"42"), INVALID_REQUEST);
        assert_eq!(code(br#"{"jsonrpc":"2.0","id":1}"#), INVALID_REQUEST);
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#),
            INVALID_REQUEST
        );
        let big = format!("[{}]", vec!["1"; MAX_BATCH + 1].join(","));
        assert_eq!(code(big.as_bytes()), INVALID_REQUEST);
    }

    #[test]
    fn lines_are_bounded() {
        let mut input = Vec::new();
        input.extend_from_slice(b"short\n");
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend_from_slice(b"\nnext\nlast-without-newline");
        let mut r = std::io::BufReader::with_capacity(4096, &input[..]);
        assert_eq!(read_line(&mut r).unwrap(), Line::Full(b"short".to_vec()));
        assert_eq!(read_line(&mut r).unwrap(), Line::TooLong);
        assert_eq!(read_line(&mut r).unwrap(), Line::Full(b"next".to_vec()));
        assert_eq!(
            read_line(&mut r).unwrap(),
            Line::Full(b"last-without-newline".to_vec())
        );
        assert_eq!(read_line(&mut r).unwrap(), Line::Eof);
    }
}
