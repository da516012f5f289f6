// What the `api_request` fuzz target checks, shared with the test that replays its corpus
// (`include!`d by fuzz/fuzz_targets/api_request.rs and vmm/tests/fuzz_corpora.rs).

use std::io::{BufReader, Cursor};

use serde_json::Value;
use vmm::session::api::methods::{Params, parse_u64};
use vmm::session::api::protocol::{
    Incoming, Line, MAX_BATCH, MAX_LINE, Request, RpcError, error, parse_line, read_line, result,
};

/// A response or error message must stay one line: the framing is one JSON value per line.
fn one_line(v: &Value) {
    let text = serde_json::to_string(v).expect("a JSON value serializes");
    assert!(!text.contains('\n'), "{text}");
}

fn request(r: &Result<Request, (Value, RpcError)>) {
    match r {
        Ok(req) => {
            assert!(req.params.is_object() || req.params.is_array());
            let id = req.id.clone().unwrap_or(Value::Null);
            assert!(id.is_string() || id.is_number() || id.is_null());
            one_line(&result(id.clone(), req.params.clone()));
            if let Ok(p) = Params::of(&req.params) {
                for name in ["addr", "len", "vcpu", "name", "spec", "keep", "value"] {
                    let _ = (p.opt_str(name), p.opt_u64(name), p.flag(name), p.raw(name));
                    if let Some(v) = p.raw(name) {
                        let _ = parse_u64(v);
                    }
                }
                let _ = (p.vcpu(), p.str("method"), p.u64("id"));
            }
        }
        Err((id, e)) => {
            assert!(!e.message.contains('\n'), "{}", e.message);
            one_line(&error(id.clone(), e));
        }
    }
}

/// Reads the input as the API's socket does (lines of at most `MAX_LINE` bytes, through a
/// small buffer so lines cross reads) and parses each line as a request or batch, then reads
/// every named parameter the methods use. Returns whether some line held a valid request.
pub fn check(data: &[u8]) -> bool {
    let mut reader = BufReader::with_capacity(64, Cursor::new(data));
    let mut good = false;
    let mut lines = 0;
    loop {
        let line = match read_line(&mut reader).expect("reading memory does not fail") {
            Line::Eof => break,
            Line::TooLong => continue,
            Line::Full(line) => line,
        };
        lines += 1;
        assert!(lines <= data.len() + 1, "more lines than bytes");
        assert!(line.len() <= MAX_LINE && !line.contains(&b'\n'));
        match parse_line(&line) {
            Incoming::One(r) => {
                good |= r.is_ok();
                request(&r);
            }
            Incoming::Batch(rs) => {
                assert!(!rs.is_empty() && rs.len() <= MAX_BATCH);
                for r in &rs {
                    good |= r.is_ok();
                    request(r);
                }
            }
            Incoming::Error(e) => {
                assert!(!e.message.contains('\n'), "{}", e.message);
                one_line(&error(Value::Null, &e));
            }
        }
    }
    good
}
