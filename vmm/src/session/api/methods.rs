//! The control API's methods: JSON parameters in, [`Session`] operations, JSON results out.
//! Addresses and register values travel as `"0x..."` strings (JSON numbers lose 64-bit
//! precision in many clients); numbers are accepted too. See README's "Control API" for each
//! method with an example.

use serde_json::{Map, Value, json};

use super::protocol::RpcError;
use crate::session::{ClientId, MemAddr, OpError, Session};
use introspect::target::Regs;

/// The method names, for `rpc.methods` and the docs.
pub const METHODS: [&str; 24] = [
    "rpc.methods",
    "vm.status",
    "vm.pause",
    "vm.resume",
    "vm.stop",
    "symbols.lookup",
    "symbols.at",
    "mem.read",
    "mem.write",
    "mem.memfd",
    "regs.get",
    "regs.set",
    "vcpu.step",
    "probe.add",
    "hbreak.add",
    "watch.add",
    "remove",
    "trace.add",
    "trace.remove",
    "trace.list",
    "list",
    "table",
    "events.subscribe",
    "events.unsubscribe",
];

impl From<OpError> for RpcError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Invalid(m) => RpcError::params(m),
            other => RpcError::refused(other.to_string()),
        }
    }
}

/// Typed access to a request's named parameters.
pub struct Params<'a>(&'a Map<String, Value>);

impl<'a> Params<'a> {
    /// The object of named parameters (positional arrays are refused).
    pub fn of(v: &'a Value) -> Result<Self, RpcError> {
        v.as_object()
            .map(Params)
            .ok_or_else(|| RpcError::params("Parameters must be given by name (a JSON object)"))
    }

    /// A parameter as given (null counts as absent).
    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.get(name)
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// A required string.
    pub fn str(&self, name: &str) -> Result<&'a str, RpcError> {
        self.get(name)
            .ok_or_else(|| RpcError::params(format!("Missing parameter \"{name}\" (a string)")))?
            .as_str()
            .ok_or_else(|| RpcError::params(format!("\"{name}\" must be a string")))
    }

    /// An optional string.
    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| RpcError::params(format!("\"{name}\" must be a string"))),
        }
    }

    /// An optional unsigned number, given as a JSON number or a `"0x..."`/decimal string.
    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => parse_u64(v).map(Some).ok_or_else(|| {
                RpcError::params(format!(
                    "\"{name}\" must be an unsigned number or a \"0x...\" string"
                ))
            }),
        }
    }

    /// A required unsigned number.
    pub fn u64(&self, name: &str) -> Result<u64, RpcError> {
        self.opt_u64(name)?
            .ok_or_else(|| RpcError::params(format!("Missing parameter \"{name}\" (a number)")))
    }

    /// An optional boolean (default `false`).
    pub fn flag(&self, name: &str) -> Result<bool, RpcError> {
        match self.get(name) {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| RpcError::params(format!("\"{name}\" must be true or false"))),
        }
    }

    /// The vCPU index (default 0).
    pub fn vcpu(&self) -> Result<usize, RpcError> {
        let v = self.opt_u64("vcpu")?.unwrap_or(0);
        usize::try_from(v).map_err(|_| RpcError::params("\"vcpu\" is out of range"))
    }
}

/// A number, or a `0x` hex / decimal string.
pub fn parse_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

fn hex(v: u64) -> Value {
    Value::String(format!("{v:#x}"))
}

/// Register names as the API shows them, in order.
pub const REG_NAMES: [&str; 18] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "rflags",
];

fn reg_mut<'r>(r: &'r mut Regs, name: &str) -> Option<&'r mut u64> {
    Some(match name {
        "rax" => &mut r.rax,
        "rbx" => &mut r.rbx,
        "rcx" => &mut r.rcx,
        "rdx" => &mut r.rdx,
        "rsi" => &mut r.rsi,
        "rdi" => &mut r.rdi,
        "rsp" => &mut r.rsp,
        "rbp" => &mut r.rbp,
        "r8" => &mut r.r8,
        "r9" => &mut r.r9,
        "r10" => &mut r.r10,
        "r11" => &mut r.r11,
        "r12" => &mut r.r12,
        "r13" => &mut r.r13,
        "r14" => &mut r.r14,
        "r15" => &mut r.r15,
        "rip" => &mut r.rip,
        "rflags" => &mut r.rflags,
        _ => return None,
    })
}

fn regs_json(r: &Regs) -> Value {
    let mut copy = *r;
    let mut m = Map::new();
    for name in REG_NAMES {
        if let Some(v) = reg_mut(&mut copy, name) {
            m.insert(name.to_string(), hex(*v));
        }
    }
    Value::Object(m)
}

/// Where a memory method reads or writes: `{"symbol": S, "offset": N}` or `{"addr": A}`,
/// virtual (the default, with `vcpu`'s page tables) or `"phys": true`.
fn mem_addr(s: &Session, p: &Params<'_>) -> Result<MemAddr, RpcError> {
    let phys = p.flag("phys")?;
    let base = match (p.opt_str("symbol")?, p.opt_u64("addr")?) {
        (Some(sym), None) => {
            if phys {
                return Err(RpcError::params(
                    "\"symbol\" is a guest-virtual address: leave out \"phys\"",
                ));
            }
            s.lookup(sym)?
        }
        (None, Some(a)) => a,
        _ => {
            return Err(RpcError::params(
                "Give exactly one of \"addr\" (a number or \"0x...\") and \"symbol\"",
            ));
        }
    };
    let addr = base.wrapping_add(p.opt_u64("offset")?.unwrap_or(0));
    Ok(if phys {
        MemAddr::Phys(addr)
    } else {
        MemAddr::Virt {
            addr,
            vcpu: p.vcpu()?,
        }
    })
}

fn unhex(s: &str) -> Result<Vec<u8>, RpcError> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return Err(RpcError::params(
            "\"data\" must be hex with two digits per byte",
        ));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| RpcError::params(format!("\"data\" is not hex at offset {i}")))
        })
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    s
}

/// Runs one method for `client`. `events.subscribe` and `events.unsubscribe` are the
/// server's (they need the connection); everything else is here.
pub fn call(
    s: &Session,
    client: ClientId,
    method: &str,
    params: &Value,
) -> Result<Value, RpcError> {
    let p = Params::of(params)?;
    Ok(match method {
        "rpc.methods" => json!(METHODS),
        "vm.status" => serde_json::to_value(s.status()).unwrap_or(Value::Null),
        "vm.pause" => json!({"changed": s.pause(client)?}),
        "vm.resume" => json!({"changed": s.resume()?}),
        "vm.stop" => {
            s.stop()?;
            json!({})
        }
        "symbols.lookup" => json!({"addr": hex(s.lookup(p.str("name")?)?)}),
        "symbols.at" => json!({"symbol": s.symbolize(p.u64("addr")?)}),
        "mem.read" => {
            let at = mem_addr(s, &p)?;
            let len = usize::try_from(p.u64("len")?)
                .map_err(|_| RpcError::params("\"len\" is out of range"))?;
            json!({"data": to_hex(&s.read(&at, len)?)})
        }
        "mem.write" => {
            let at = mem_addr(s, &p)?;
            let data = unhex(p.str("data")?)?;
            s.write(&at, &data)?;
            json!({"written": data.len()})
        }
        "regs.get" => regs_json(&s.regs(p.vcpu()?)?),
        "regs.set" => {
            let changes = p.get("regs").and_then(Value::as_object).ok_or_else(|| {
                RpcError::params("\"regs\" must be an object: {\"rax\": \"0x1\"}")
            })?;
            let mut parsed = Vec::new();
            for (name, v) in changes {
                if !REG_NAMES.contains(&name.as_str()) {
                    return Err(RpcError::params(format!(
                        "\"{name}\" is not a register (one of {})",
                        REG_NAMES.join(", ")
                    )));
                }
                let v = parse_u64(v)
                    .ok_or_else(|| RpcError::params(format!("\"{name}\": not a number")))?;
                parsed.push((name.clone(), v));
            }
            let regs = s.set_regs(p.vcpu()?, |r| {
                for (name, v) in &parsed {
                    if let Some(slot) = reg_mut(r, name) {
                        *slot = *v;
                    }
                }
            })?;
            regs_json(&regs)
        }
        "vcpu.step" => regs_json(&s.step(p.vcpu()?)?),
        "probe.add" => {
            let id = s.add_probe(client, p.str("spec")?, p.flag("keep")?)?;
            json!({"id": id.index(), "how": item_how(s, id.index())})
        }
        "hbreak.add" => {
            let id = s.add_hbreak(client, p.str("at")?, p.flag("keep")?)?;
            json!({"id": id.index(), "how": item_how(s, id.index())})
        }
        "watch.add" => {
            let id = s.add_watch(client, p.str("spec")?, p.flag("keep")?)?;
            json!({"id": id.index(), "how": item_how(s, id.index())})
        }
        "remove" => {
            let id = u32::try_from(p.u64("id")?)
                .map_err(|_| RpcError::params("\"id\" is out of range"))?;
            s.remove(id)?;
            json!({})
        }
        "trace.add" => json!({"id": s.add_trace(client, p.str("target")?, p.flag("keep")?)?}),
        "trace.remove" => {
            let id = u32::try_from(p.u64("id")?)
                .map_err(|_| RpcError::params("\"id\" is out of range"))?;
            s.remove_trace(id)?;
            json!({})
        }
        "trace.list" => Value::Array(
            s.traces()
                .into_iter()
                .map(|(id, t)| json!({"id": id, "target": t}))
                .collect(),
        ),
        "list" => serde_json::to_value(s.list()).unwrap_or(Value::Null),
        "table" => json!({"text": s.table()}),
        other => {
            return Err(RpcError {
                code: super::protocol::METHOD_NOT_FOUND,
                message: format!("No method \"{other}\" (rpc.methods lists them)"),
            });
        }
    })
}

fn item_how(s: &Session, id: u32) -> String {
    s.list()
        .into_iter()
        .find(|i| i.id == id)
        .map(|i| i.how)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_hex() {
        assert_eq!(parse_u64(&json!(5)), Some(5));
        assert_eq!(
            parse_u64(&json!("0xffffffff81000000")),
            Some(0xffff_ffff_8100_0000)
        );
        assert_eq!(parse_u64(&json!("12")), Some(12));
        assert_eq!(parse_u64(&json!(-1)), None);
        assert_eq!(parse_u64(&json!("0xzz")), None);
        assert_eq!(unhex("00ff10").unwrap(), vec![0, 255, 16]);
        assert!(unhex("0").is_err() && unhex("zz").is_err());
        assert_eq!(to_hex(&[0, 255, 16]), "00ff10");
    }

    #[test]
    fn registers_by_name() {
        let mut r = Regs::default();
        *reg_mut(&mut r, "r13").unwrap() = 7;
        assert_eq!(r.r13, 7);
        assert!(reg_mut(&mut r, "cr3").is_none());
        let j = regs_json(&r);
        assert_eq!(j["r13"], "0x7");
        assert_eq!(j.as_object().unwrap().len(), REG_NAMES.len());
    }
}
