//! Type records: the 19 kinds, their decoding and validation, and borrowed views of them.

use super::header::{Header, StrRef, Strings, le32};
use super::{Btf, BtfError, MAX_TYPES, TypeId};

/// A BTF kind (`BTF_KIND_*`). Displayed as bpftool prints it (`STRUCT`, `FUNC_PROTO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `void`: only type ID 0.
    Void,
    /// An integer (also `char` and `_Bool`).
    Int,
    /// A pointer.
    Ptr,
    /// An array.
    Array,
    /// A struct.
    Struct,
    /// A union.
    Union,
    /// An enum with 32-bit values.
    Enum,
    /// A forward declaration of a struct or union.
    Fwd,
    /// A typedef.
    Typedef,
    /// `volatile`.
    Volatile,
    /// `const`.
    Const,
    /// `restrict`.
    Restrict,
    /// A function (its name and linkage; its type is a [`Kind::FuncProto`]).
    Func,
    /// A function prototype: return type and parameters.
    FuncProto,
    /// A variable.
    Var,
    /// A data section and the variables in it.
    Datasec,
    /// A floating-point type.
    Float,
    /// An attribute on a declaration (`__attribute__((btf_decl_tag("...")))`).
    DeclTag,
    /// An attribute on a type (`__attribute__((btf_type_tag("...")))`, e.g. `__user`).
    TypeTag,
    /// An enum with 64-bit values.
    Enum64,
}

impl Kind {
    /// The kind of a `BTF_KIND_*` number.
    pub fn from_raw(raw: u8) -> Option<Kind> {
        use Kind::*;
        Some(match raw {
            0 => Void,
            1 => Int,
            2 => Ptr,
            3 => Array,
            4 => Struct,
            5 => Union,
            6 => Enum,
            7 => Fwd,
            8 => Typedef,
            9 => Volatile,
            10 => Const,
            11 => Restrict,
            12 => Func,
            13 => FuncProto,
            14 => Var,
            15 => Datasec,
            16 => Float,
            17 => DeclTag,
            18 => TypeTag,
            19 => Enum64,
            _ => return None,
        })
    }

    /// The name bpftool prints (`STRUCT`, `FUNC_PROTO`, `UNKN` for void).
    pub fn as_str(self) -> &'static str {
        use Kind::*;
        match self {
            Void => "UNKN",
            Int => "INT",
            Ptr => "PTR",
            Array => "ARRAY",
            Struct => "STRUCT",
            Union => "UNION",
            Enum => "ENUM",
            Fwd => "FWD",
            Typedef => "TYPEDEF",
            Volatile => "VOLATILE",
            Const => "CONST",
            Restrict => "RESTRICT",
            Func => "FUNC",
            FuncProto => "FUNC_PROTO",
            Var => "VAR",
            Datasec => "DATASEC",
            Float => "FLOAT",
            DeclTag => "DECL_TAG",
            TypeTag => "TYPE_TAG",
            Enum64 => "ENUM64",
        }
    }

    /// Whether the record's third word is another type's ID (rather than a size).
    fn refers(self) -> bool {
        use Kind::*;
        matches!(
            self,
            Ptr | Typedef
                | Volatile
                | Const
                | Restrict
                | Func
                | FuncProto
                | Var
                | DeclTag
                | TypeTag
        )
    }

    /// Whether the record's third word is a size in bytes.
    fn has_size(self) -> bool {
        use Kind::*;
        matches!(self, Int | Struct | Union | Enum | Enum64 | Datasec | Float)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The encoding bits of an INT (`BTF_INT_SIGNED`, `BTF_INT_CHAR`, `BTF_INT_BOOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IntEncoding(pub u8);

impl IntEncoding {
    /// No flags: unsigned.
    pub const NONE: IntEncoding = IntEncoding(0);
    /// Signed.
    pub const SIGNED: IntEncoding = IntEncoding(1);
    /// A character type.
    pub const CHAR: IntEncoding = IntEncoding(2);
    /// `_Bool`.
    pub const BOOL: IntEncoding = IntEncoding(4);

    /// Whether the integer is signed.
    pub fn is_signed(self) -> bool {
        self.0 & 1 != 0
    }
}

/// The word after an INT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntInfo {
    /// Signedness and character / boolean flags.
    pub encoding: IntEncoding,
    /// Bit offset of the value within the integer's bytes (old-style bitfields).
    pub offset: u8,
    /// Number of value bits.
    pub bits: u8,
}

/// An ARRAY's element type, index type and element count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrayInfo {
    /// The element type.
    pub elem: TypeId,
    /// The index type (an INT).
    pub index: TypeId,
    /// The number of elements.
    pub nelems: u32,
}

/// A struct or union member as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// The member's name ("" for an anonymous struct or union member).
    pub name: &'a str,
    /// The member's type.
    pub ty: TypeId,
    /// Offset from the start of the struct, in bits.
    pub bit_offset: u32,
    /// Width of a bitfield in bits, 0 if the member is not a bitfield. Taken from the
    /// member record when the struct's kind_flag is set; [`Btf::members`] also fills it for
    /// old-style bitfields (kind_flag clear, the width in the member's INT type).
    pub bitfield_size: u8,
}

impl Member<'_> {
    /// The offset in whole bytes (of the byte holding the first bit, for a bitfield).
    pub fn byte_offset(&self) -> u32 {
        self.bit_offset / 8
    }
}

/// An enumerator of an ENUM or ENUM64, its value sign-extended or not per the type's
/// kind_flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enumerator<'a> {
    /// The constant's name.
    pub name: &'a str,
    /// Its value.
    pub value: i128,
}

/// A parameter of a FUNC_PROTO. A last parameter with type void and no name means `...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// The parameter's name ("" in a prototype of a function pointer type).
    pub name: &'a str,
    /// Its type.
    pub ty: TypeId,
}

/// A variable in a DATASEC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VarSecinfo {
    /// The VAR (or FUNC) type.
    pub ty: TypeId,
    /// Offset in the section.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// Linkage of a FUNC (in its vlen) or a VAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// `static`.
    Static,
    /// Global.
    Global,
    /// `extern`.
    Extern,
    /// A value the format does not define.
    Other(u32),
}

impl Linkage {
    fn from_raw(raw: u32) -> Linkage {
        match raw {
            0 => Linkage::Static,
            1 => Linkage::Global,
            2 => Linkage::Extern,
            n => Linkage::Other(n),
        }
    }
}

/// One decoded and validated type record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rec {
    pub(crate) name: StrRef,
    pub(crate) kind: Kind,
    pub(crate) kind_flag: bool,
    pub(crate) vlen: u16,
    /// `size` or `type`, per the kind.
    pub(crate) size_or_type: u32,
    /// INT: the encoding word; VAR: linkage; DECL_TAG: component_idx's bits. ARRAY, STRUCT,
    /// UNION, ENUM, ENUM64, FUNC_PROTO, DATASEC: the index of the first [`Item`].
    pub(crate) extra: u32,
}

impl Rec {
    const VOID: Rec = Rec {
        name: StrRef::EMPTY,
        kind: Kind::Void,
        kind_flag: false,
        vlen: 0,
        size_or_type: 0,
        extra: 0,
    };

    fn items(&self) -> std::ops::Range<usize> {
        let start = self.extra as usize;
        match self.kind {
            Kind::Array => start..start + 1,
            Kind::Struct
            | Kind::Union
            | Kind::Enum
            | Kind::Enum64
            | Kind::FuncProto
            | Kind::Datasec => start..start + usize::from(self.vlen),
            _ => 0..0,
        }
    }
}

/// One trailing record. Members: `a` type, `b` offset word. Parameters: `a` type.
/// Enumerators: `a` value (low word), `b` high word. Section variables: `a` type,
/// `b` offset, `c` size. Arrays: `a` element, `b` index type, `c` count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub(crate) name: StrRef,
    pub(crate) a: u32,
    pub(crate) b: u32,
    pub(crate) c: u32,
}

/// A borrowed view of one type.
#[derive(Debug, Clone, Copy)]
pub struct Type<'a> {
    btf: &'a Btf,
    id: TypeId,
    rec: &'a Rec,
}

impl<'a> Type<'a> {
    pub(crate) fn new(btf: &'a Btf, id: TypeId, rec: &'a Rec) -> Type<'a> {
        Type { btf, id, rec }
    }

    /// The type's ID.
    pub fn id(&self) -> TypeId {
        self.id
    }

    /// The type's name ("" if anonymous).
    pub fn name(&self) -> &'a str {
        self.btf.strings.get(self.rec.name)
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.rec.kind
    }

    /// The kind_flag bit: bitfield offsets in members (STRUCT, UNION), a union (FWD), signed
    /// values (ENUM, ENUM64).
    pub fn kind_flag(&self) -> bool {
        self.rec.kind_flag
    }

    /// The vlen field: the number of members, enumerators, parameters or section variables;
    /// for a FUNC, its linkage.
    pub fn vlen(&self) -> u16 {
        self.rec.vlen
    }

    /// The size in bytes recorded by INT, STRUCT, UNION, ENUM, ENUM64, DATASEC and FLOAT.
    /// (For any type, [`Btf::size_of`] computes it.)
    pub fn size(&self) -> Option<u32> {
        self.rec.kind.has_size().then_some(self.rec.size_or_type)
    }

    /// The type this one refers to: the target of PTR, TYPEDEF, VOLATILE, CONST, RESTRICT,
    /// TYPE_TAG, VAR and DECL_TAG; a FUNC's FUNC_PROTO; a FUNC_PROTO's return type.
    pub fn target(&self) -> Option<TypeId> {
        self.rec
            .kind
            .refers()
            .then_some(TypeId(self.rec.size_or_type))
    }

    /// An INT's encoding, bit offset and width.
    pub fn int(&self) -> Option<IntInfo> {
        (self.rec.kind == Kind::Int).then(|| {
            let [bits, _, offset, encoding] = self.rec.extra.to_le_bytes();
            IntInfo {
                encoding: IntEncoding(encoding & 0x0f),
                offset,
                bits,
            }
        })
    }

    /// An ARRAY's element type, index type and count.
    pub fn array(&self) -> Option<ArrayInfo> {
        if self.rec.kind != Kind::Array {
            return None;
        }
        self.items().first().map(|i| ArrayInfo {
            elem: TypeId(i.a),
            index: TypeId(i.b),
            nelems: i.c,
        })
    }

    /// A STRUCT's or UNION's members as recorded (no old-style bitfield widths: see
    /// [`Btf::members`]). Empty for other kinds.
    pub fn members(&self) -> impl Iterator<Item = Member<'a>> + 'a {
        let composite = matches!(self.rec.kind, Kind::Struct | Kind::Union);
        let kind_flag = self.rec.kind_flag;
        let btf = self.btf;
        self.items()
            .iter()
            .filter(move |_| composite)
            .map(move |i| {
                let (bit_offset, bitfield_size) = if kind_flag {
                    let [.., size] = i.b.to_le_bytes();
                    (i.b & 0x00ff_ffff, size)
                } else {
                    (i.b, 0)
                };
                Member {
                    name: btf.strings.get(i.name),
                    ty: TypeId(i.a),
                    bit_offset,
                    bitfield_size,
                }
            })
    }

    /// An ENUM's or ENUM64's enumerators. Empty for other kinds.
    pub fn enumerators(&self) -> impl Iterator<Item = Enumerator<'a>> + 'a {
        let kind = self.rec.kind;
        let signed = self.rec.kind_flag;
        let btf = self.btf;
        self.items()
            .iter()
            .filter(move |_| matches!(kind, Kind::Enum | Kind::Enum64))
            .map(move |i| {
                let value = match (kind, signed) {
                    (Kind::Enum, false) => i128::from(i.a),
                    (Kind::Enum, true) => i128::from(i32::from_le_bytes(i.a.to_le_bytes())),
                    (_, false) => i128::from(u64::from(i.b) << 32 | u64::from(i.a)),
                    (_, true) => i128::from(i64::from_le_bytes(
                        (u64::from(i.b) << 32 | u64::from(i.a)).to_le_bytes(),
                    )),
                };
                Enumerator {
                    name: btf.strings.get(i.name),
                    value,
                }
            })
    }

    /// A FUNC_PROTO's parameters. Empty for other kinds.
    pub fn params(&self) -> impl Iterator<Item = Param<'a>> + 'a {
        let proto = self.rec.kind == Kind::FuncProto;
        let btf = self.btf;
        self.items()
            .iter()
            .filter(move |_| proto)
            .map(move |i| Param {
                name: btf.strings.get(i.name),
                ty: TypeId(i.a),
            })
    }

    /// A DATASEC's variables. Empty for other kinds.
    pub fn secinfos(&self) -> impl Iterator<Item = VarSecinfo> + 'a {
        let datasec = self.rec.kind == Kind::Datasec;
        self.items()
            .iter()
            .filter(move |_| datasec)
            .map(|i| VarSecinfo {
                ty: TypeId(i.a),
                offset: i.b,
                size: i.c,
            })
    }

    /// The linkage of a FUNC or VAR.
    pub fn linkage(&self) -> Option<Linkage> {
        match self.rec.kind {
            Kind::Func => Some(Linkage::from_raw(u32::from(self.rec.vlen))),
            Kind::Var => Some(Linkage::from_raw(self.rec.extra)),
            _ => None,
        }
    }

    /// A DECL_TAG's component index: -1 for the tagged declaration itself, else the member
    /// or parameter it applies to.
    pub fn component_idx(&self) -> Option<i32> {
        (self.rec.kind == Kind::DeclTag).then(|| i32::from_le_bytes(self.rec.extra.to_le_bytes()))
    }

    fn items(&self) -> &'a [Item] {
        self.btf.items.get(self.rec.items()).unwrap_or_default()
    }
}

/// Decodes the type section: every record and its trailing data, each checked to fit, each
/// name checked to start a string, then every type reference checked to exist.
pub(crate) fn parse_types(
    data: &[u8],
    h: &Header,
    strings: &Strings,
) -> Result<(Vec<Rec>, Vec<Item>), BtfError> {
    let sec = data.get(h.type_range(data.len())?).unwrap_or_default();
    let base = h.type_start();
    // Each record takes at least 12 bytes and each item at least 8: these bound the vectors.
    let mut types = vec![Rec::VOID];
    let mut items = Vec::new();
    let mut offsets = vec![0u64];
    let mut pos = 0usize;
    while pos < sec.len() {
        let offset = base + pos as u64;
        let id = u32::try_from(types.len())
            .ok()
            .filter(|&id| id <= MAX_TYPES)
            .ok_or(BtfError::TooManyTypes { offset })?;
        let have = sec.len() - pos;
        let truncated = |need: usize| BtfError::Truncated {
            id,
            offset,
            need: need as u64,
            have: have as u64,
        };
        if have < 12 {
            return Err(truncated(12));
        }
        let word = |at: usize| le32(sec, pos + at).ok_or(truncated(at + 4));
        let (name_off, info, size_or_type) = (word(0)?, word(4)?, word(8)?);
        let [v0, v1, _, kind_byte] = info.to_le_bytes();
        let vlen = u16::from_le_bytes([v0, v1]);
        let raw_kind = kind_byte & 0x1f;
        let kind = Kind::from_raw(raw_kind)
            .filter(|&k| k != Kind::Void)
            .ok_or(BtfError::UnknownKind {
                id,
                offset,
                kind: raw_kind,
            })?;
        let n = usize::from(vlen);
        let trailing = match kind {
            Kind::Int | Kind::Var | Kind::DeclTag => 4,
            Kind::Array => 12,
            Kind::Struct | Kind::Union | Kind::Enum64 | Kind::Datasec => 12 * n,
            Kind::Enum | Kind::FuncProto => 8 * n,
            _ => 0,
        };
        if have < 12 + trailing {
            return Err(truncated(12 + trailing));
        }
        let name_of = |off: u32| {
            strings.lookup(off).ok_or(BtfError::BadName {
                id,
                offset,
                name_off: off,
            })
        };
        let name = name_of(name_off)?;
        let first = u32::try_from(items.len()).map_err(|_| BtfError::TooManyTypes { offset })?;
        let t = 12;
        let extra = match kind {
            Kind::Int | Kind::Var | Kind::DeclTag => word(t)?,
            Kind::Array => {
                items.push(Item {
                    name: StrRef::EMPTY,
                    a: word(t)?,
                    b: word(t + 4)?,
                    c: word(t + 8)?,
                });
                first
            }
            Kind::Struct | Kind::Union | Kind::Enum64 | Kind::Datasec => {
                for i in 0..n {
                    let at = t + 12 * i;
                    let named = kind != Kind::Datasec;
                    items.push(Item {
                        name: if named {
                            name_of(word(at)?)?
                        } else {
                            StrRef::EMPTY
                        },
                        a: word(if named { at + 4 } else { at })?,
                        b: word(if named { at + 8 } else { at + 4 })?,
                        c: if named { 0 } else { word(at + 8)? },
                    });
                }
                first
            }
            Kind::Enum | Kind::FuncProto => {
                for i in 0..n {
                    let at = t + 8 * i;
                    items.push(Item {
                        name: name_of(word(at)?)?,
                        a: word(at + 4)?,
                        b: 0,
                        c: 0,
                    });
                }
                first
            }
            _ => 0,
        };
        types.push(Rec {
            name,
            kind,
            kind_flag: info >> 31 == 1,
            vlen,
            size_or_type,
            extra,
        });
        offsets.push(offset);
        pos += 12 + trailing;
    }
    check_refs(&types, &items, &offsets)?;
    Ok((types, items))
}

/// Checks that every type ID a record refers to exists.
fn check_refs(types: &[Rec], items: &[Item], offsets: &[u64]) -> Result<(), BtfError> {
    let count = u32::try_from(types.len()).unwrap_or(u32::MAX);
    for (i, (r, &offset)) in types.iter().zip(offsets).enumerate() {
        let id = u32::try_from(i).unwrap_or(u32::MAX);
        let check = |target: u32| {
            if target < count {
                Ok(())
            } else {
                Err(BtfError::BadTypeRef {
                    id,
                    offset,
                    target,
                    count,
                })
            }
        };
        if r.kind.refers() {
            check(r.size_or_type)?;
        }
        let its = items.get(r.items()).unwrap_or_default();
        match r.kind {
            Kind::Array => its.iter().try_for_each(|it| {
                check(it.a)?;
                check(it.b)
            })?,
            Kind::Struct | Kind::Union | Kind::FuncProto | Kind::Datasec => {
                its.iter().try_for_each(|it| check(it.a))?
            }
            _ => {}
        }
    }
    Ok(())
}
