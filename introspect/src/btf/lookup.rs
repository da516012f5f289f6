//! Queries on parsed BTF: find, resolve, sizes, members and member paths, function
//! prototypes, C-like type names. Every walk along references is bounded by [`MAX_DEPTH`].

use super::types::{Member, Param, Type};
use super::{Btf, Kind, LookupError, MAX_DEPTH, MAX_WORK, POINTER_SIZE, TypeId};

/// The longest type name [`Btf::type_name`] builds before giving up.
const MAX_NAME_LEN: usize = 64 * 1024;

/// What one query may still do: steps left (types visited, members scanned).
struct Budget {
    left: usize,
}

impl Budget {
    fn new() -> Budget {
        Budget { left: MAX_WORK }
    }

    /// Spends `n` steps on behalf of `id`.
    fn spend(&mut self, id: TypeId, n: usize) -> Result<(), LookupError> {
        self.left = self
            .left
            .checked_sub(n)
            .ok_or(LookupError::TooComplex(id))?;
        Ok(())
    }
}

/// A member found by name or by path, with its offset from the start of the outermost
/// struct (through anonymous members and every path component).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The member's name (the last path component).
    pub name: &'a str,
    /// The member's type.
    pub ty: TypeId,
    /// Cumulative offset in bits.
    pub bit_offset: u64,
    /// Bitfield width in bits, 0 if not a bitfield.
    pub bitfield_size: u8,
}

impl Field<'_> {
    /// The cumulative offset in whole bytes (of the byte holding the first bit, for a
    /// bitfield).
    pub fn byte_offset(&self) -> u64 {
        self.bit_offset / 8
    }
}

/// A function's prototype, found through its FUNC record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncProto<'a> {
    /// The function's name.
    pub name: &'a str,
    /// The FUNC record.
    pub func: TypeId,
    /// Its FUNC_PROTO record.
    pub proto: TypeId,
    /// The return type ([`TypeId::VOID`] for `void`).
    pub ret: TypeId,
    /// The parameters, in order (without the `...` marker).
    pub params: Vec<Param<'a>>,
    /// Whether the function takes `...` after its parameters.
    pub variadic: bool,
}

impl FuncProto<'_> {
    /// The C declaration: `long do_sys_openat2(int dfd, const char *filename, ...)`.
    pub fn signature(&self, btf: &Btf) -> Result<String, LookupError> {
        let mut budget = Budget::new();
        let list = btf.param_list(&self.params, self.variadic, true, 1, &mut budget)?;
        btf.declare(self.ret, format!("{}({list})", self.name), 1, &mut budget)
    }
}

impl Btf {
    /// The type with this ID.
    pub fn get(&self, id: TypeId) -> Result<Type<'_>, LookupError> {
        self.rec(id)
            .map(|r| Type::new(self, id, r))
            .ok_or(LookupError::NoSuchType(id))
    }

    /// Every type named `name`, of any kind, by kind then ID.
    pub fn find_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Type<'a>> + 'a {
        let start = self
            .by_name
            .partition_point(|&id| self.get(id).map_or("", |t| t.name()) < name);
        self.by_name
            .get(start..)
            .unwrap_or_default()
            .iter()
            .map_while(move |&id| self.get(id).ok().filter(|t| t.name() == name))
    }

    /// The first (lowest-ID) type named `name` of kind `kind`.
    pub fn find(&self, name: &str, kind: Kind) -> Result<TypeId, LookupError> {
        self.find_all(name)
            .find(|t| t.kind() == kind)
            .map(|t| t.id())
            .ok_or_else(|| LookupError::NotFound {
                name: name.to_owned(),
                kind,
            })
    }

    /// Follows TYPEDEF, CONST, VOLATILE, RESTRICT and TYPE_TAG to the type underneath.
    pub fn resolve(&self, id: TypeId) -> Result<TypeId, LookupError> {
        let mut cur = id;
        for _ in 0..=MAX_DEPTH {
            let t = self.get(cur)?;
            match (t.kind(), t.target()) {
                (
                    Kind::Typedef | Kind::Const | Kind::Volatile | Kind::Restrict | Kind::TypeTag,
                    Some(next),
                ) => cur = next,
                _ => return Ok(cur),
            }
        }
        Err(LookupError::TooDeep(id))
    }

    /// The size of a value of this type in bytes: arrays multiply out, pointers are
    /// [`POINTER_SIZE`], typedefs, qualifiers and VARs follow their target. Void, functions,
    /// forward declarations and tags have no size ([`LookupError::NoSize`]).
    pub fn size_of(&self, id: TypeId) -> Result<u64, LookupError> {
        let mut cur = id;
        let mut count: u64 = 1;
        let overflow = LookupError::SizeOverflow(id);
        for _ in 0..=MAX_DEPTH {
            let t = self.get(cur)?;
            if let Some(size) = t.size() {
                return count.checked_mul(u64::from(size)).ok_or(overflow);
            }
            match t.kind() {
                Kind::Ptr => return count.checked_mul(POINTER_SIZE).ok_or(overflow),
                Kind::Array => {
                    let a = t.array().ok_or(LookupError::NoSuchType(cur))?;
                    count = count
                        .checked_mul(u64::from(a.nelems))
                        .ok_or(overflow.clone())?;
                    cur = a.elem;
                }
                Kind::Typedef
                | Kind::Const
                | Kind::Volatile
                | Kind::Restrict
                | Kind::TypeTag
                | Kind::Var => cur = t.target().unwrap_or(TypeId::VOID),
                kind => return Err(LookupError::NoSize { id: cur, kind }),
            }
        }
        Err(LookupError::TooDeep(id))
    }

    /// The members of a struct or union (`id` may be a typedef or qualified). An old-style
    /// bitfield (the struct's kind_flag clear, the member's INT narrower than its bytes) gets
    /// its width and the INT's bit offset here, so every bitfield looks the same.
    pub fn members(&self, id: TypeId) -> Result<Vec<Member<'_>>, LookupError> {
        let t = self.composite(id)?;
        if t.kind_flag() {
            return Ok(t.members().collect());
        }
        Ok(t.members()
            .map(|mut m| {
                let int = self
                    .resolve(m.ty)
                    .and_then(|r| self.get(r))
                    .ok()
                    .and_then(|r| Some((r.int()?, r.size()?)));
                if let Some((int, size)) = int
                    && (u64::from(int.bits) != u64::from(size) * 8 || int.offset != 0)
                {
                    m.bitfield_size = int.bits;
                    m.bit_offset = m.bit_offset.saturating_add(u32::from(int.offset));
                }
                m
            })
            .collect())
    }

    /// The member `name` of a struct or union, looking inside anonymous struct and union
    /// members too (as C does: `task_struct`'s members in unnamed unions), with its offset
    /// from the start of `id`.
    pub fn member(&self, id: TypeId, name: &str) -> Result<Field<'_>, LookupError> {
        self.find_member(id, name, 0, 0, &mut Budget::new())?
            .ok_or_else(|| LookupError::NoMember {
                id,
                type_name: self
                    .get(id)
                    .map(|t| t.name().to_owned())
                    .unwrap_or_default(),
                member: name.to_owned(),
            })
    }

    /// A dotted member path (`se.avg.load_avg`, `f_path.dentry`): each component a member of
    /// the previous one's struct or union (found as [`Btf::member`] does), the offsets added
    /// up. Paths do not go through pointers: a component whose type is a pointer ends the
    /// path (`->` needs a memory read, which is the caller's).
    pub fn member_path(&self, id: TypeId, path: &str) -> Result<Field<'_>, LookupError> {
        let mut cur = id;
        let mut found: Option<Field<'_>> = None;
        for comp in path.split('.') {
            if comp.is_empty() {
                return Err(LookupError::BadPath(path.to_owned()));
            }
            let f = self.member(cur, comp)?;
            let base = found.map_or(0, |f| f.bit_offset);
            found = Some(Field {
                bit_offset: base.saturating_add(f.bit_offset),
                ..f
            });
            cur = f.ty;
        }
        found.ok_or_else(|| LookupError::BadPath(path.to_owned()))
    }

    /// The prototype of the function `name`: its FUNC record's FUNC_PROTO, with parameter
    /// names and types and the return type.
    pub fn func_proto(&self, name: &str) -> Result<FuncProto<'_>, LookupError> {
        let func = self.find(name, Kind::Func)?;
        let f = self.get(func)?;
        let proto = f.target().unwrap_or(TypeId::VOID);
        let p = self.get(proto)?;
        if p.kind() != Kind::FuncProto {
            return Err(LookupError::NotFuncProto {
                id: func,
                proto,
                kind: p.kind(),
            });
        }
        let mut params: Vec<Param<'_>> = p.params().collect();
        let variadic = params
            .last()
            .is_some_and(|l| l.ty == TypeId::VOID && l.name.is_empty());
        if variadic {
            params.pop();
        }
        Ok(FuncProto {
            name: f.name(),
            func,
            proto,
            ret: p.target().unwrap_or(TypeId::VOID),
            params,
            variadic,
        })
    }

    /// A short C-like name of a type: `unsigned int`, `struct file *`, `const char *`,
    /// `char[16]`, `char *const`, `int (*)(struct file *, long)`, `struct {...}` for an
    /// anonymous struct. Type tags (`__user`) are left out. Functions, variables and
    /// sections give their name.
    pub fn type_name(&self, id: TypeId) -> Result<String, LookupError> {
        self.declare(id, String::new(), 0, &mut Budget::new())
    }

    /// The struct or union underneath `id`.
    fn composite(&self, id: TypeId) -> Result<Type<'_>, LookupError> {
        let r = self.resolve(id)?;
        let t = self.get(r)?;
        match t.kind() {
            Kind::Struct | Kind::Union => Ok(t),
            kind => Err(LookupError::NotComposite { id: r, kind }),
        }
    }

    fn find_member(
        &self,
        id: TypeId,
        name: &str,
        base: u64,
        depth: usize,
        budget: &mut Budget,
    ) -> Result<Option<Field<'_>>, LookupError> {
        if depth > MAX_DEPTH {
            return Err(LookupError::TooDeep(id));
        }
        let members = self.members(id)?;
        budget.spend(id, members.len() + 1)?;
        if let Some(m) = members.iter().find(|m| m.name == name) {
            return Ok(Some(Field {
                name: m.name,
                ty: m.ty,
                bit_offset: base.saturating_add(u64::from(m.bit_offset)),
                bitfield_size: m.bitfield_size,
            }));
        }
        for m in members.iter().filter(|m| m.name.is_empty()) {
            let inner = self.resolve(m.ty)?;
            if !matches!(self.get(inner)?.kind(), Kind::Struct | Kind::Union) {
                continue;
            }
            let at = base.saturating_add(u64::from(m.bit_offset));
            if let Some(f) = self.find_member(inner, name, at, depth + 1, budget)? {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// C declarator formatting: `inner` is what is already built around the name (`*`,
    /// `[16]`, `(*)(int)`), the type at `id` goes around it.
    fn declare(
        &self,
        id: TypeId,
        inner: String,
        depth: usize,
        budget: &mut Budget,
    ) -> Result<String, LookupError> {
        if depth > MAX_DEPTH {
            return Err(LookupError::TooDeep(id));
        }
        budget.spend(id, 1)?;
        if inner.len() > MAX_NAME_LEN {
            return Err(LookupError::TooComplex(id));
        }
        let t = self.get(id)?;
        let named = |prefix: &str| {
            let name = t.name();
            match (prefix, name.is_empty()) {
                ("", true) => "(anon)".to_owned(),
                ("", false) => name.to_owned(),
                (p, true) => format!("{p} {{...}}"),
                (p, false) => format!("{p} {name}"),
            }
        };
        let base = match t.kind() {
            Kind::Void => "void".to_owned(),
            Kind::Struct => named("struct"),
            Kind::Union => named("union"),
            Kind::Enum | Kind::Enum64 => named("enum"),
            Kind::Fwd if t.kind_flag() => named("union"),
            Kind::Fwd => named("struct"),
            Kind::Int
            | Kind::Float
            | Kind::Typedef
            | Kind::Func
            | Kind::Var
            | Kind::Datasec
            | Kind::DeclTag => named(""),
            Kind::TypeTag => {
                return self.declare(t.target().unwrap_or_default(), inner, depth + 1, budget);
            }
            Kind::Ptr => {
                let target = t.target().unwrap_or_default();
                let under = self.peel(target, false, depth)?;
                let wrapped = if matches!(under, Kind::Array | Kind::FuncProto) {
                    format!("(*{inner})")
                } else {
                    format!("*{inner}")
                };
                return self.declare(target, wrapped, depth + 1, budget);
            }
            Kind::Const | Kind::Volatile | Kind::Restrict => {
                let q = match t.kind() {
                    Kind::Const => "const",
                    Kind::Volatile => "volatile",
                    _ => "restrict",
                };
                let target = t.target().unwrap_or_default();
                if self.peel(target, true, depth)? == Kind::Ptr {
                    let inner = if inner.is_empty() {
                        q.to_owned()
                    } else {
                        format!("{q} {inner}")
                    };
                    return self.declare(target, inner, depth + 1, budget);
                }
                return Ok(format!(
                    "{q} {}",
                    self.declare(target, inner, depth + 1, budget)?
                ));
            }
            Kind::Array => {
                let a = t.array().ok_or(LookupError::NoSuchType(id))?;
                return self.declare(a.elem, format!("{inner}[{}]", a.nelems), depth + 1, budget);
            }
            Kind::FuncProto => {
                let params: Vec<Param<'_>> = t.params().collect();
                let variadic = params
                    .last()
                    .is_some_and(|l| l.ty == TypeId::VOID && l.name.is_empty());
                let n = params.len() - usize::from(variadic);
                let list = self.param_list(
                    params.get(..n).unwrap_or_default(),
                    variadic,
                    false,
                    depth + 1,
                    budget,
                )?;
                return self.declare(
                    t.target().unwrap_or_default(),
                    format!("{inner}({list})"),
                    depth + 1,
                    budget,
                );
            }
        };
        Ok(if inner.is_empty() {
            base
        } else if inner.starts_with('[') {
            format!("{base}{inner}")
        } else {
            format!("{base} {inner}")
        })
    }

    /// A parameter list: `int dfd, const char *filename` (or types only), `...` last if
    /// variadic, `void` if empty.
    fn param_list(
        &self,
        params: &[Param<'_>],
        variadic: bool,
        with_names: bool,
        depth: usize,
        budget: &mut Budget,
    ) -> Result<String, LookupError> {
        let mut parts = Vec::with_capacity(params.len() + 1);
        for p in params {
            let inner = if with_names {
                p.name.to_owned()
            } else {
                String::new()
            };
            parts.push(self.declare(p.ty, inner, depth + 1, budget)?);
        }
        if variadic {
            parts.push("...".to_owned());
        }
        if parts.is_empty() {
            parts.push("void".to_owned());
        }
        Ok(parts.join(", "))
    }

    /// The kind of `id` after skipping TYPE_TAGs, and qualifiers if `qualifiers`.
    fn peel(&self, id: TypeId, qualifiers: bool, depth: usize) -> Result<Kind, LookupError> {
        let mut cur = id;
        for _ in depth..=MAX_DEPTH {
            let t = self.get(cur)?;
            match (t.kind(), t.target()) {
                (Kind::TypeTag, Some(next)) => cur = next,
                (Kind::Const | Kind::Volatile | Kind::Restrict, Some(next)) if qualifiers => {
                    cur = next
                }
                (kind, _) => return Ok(kind),
            }
        }
        Err(LookupError::TooDeep(id))
    }
}
