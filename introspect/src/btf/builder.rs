//! [`BtfBuilder`]: writes small BTF blobs, for tests, fixtures and documentation.

use super::types::{IntEncoding, Linkage};
use super::{Kind, TypeId};

/// Builds a little-endian BTF blob one type at a time; each method returns the new type's
/// ID (IDs count from 1 in call order). Nothing is checked: [`BtfBuilder::raw`] writes any
/// record, so tests can build corrupt blobs as easily as good ones.
#[derive(Debug, Clone)]
pub struct BtfBuilder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next: u32,
}

impl Default for BtfBuilder {
    fn default() -> Self {
        BtfBuilder {
            types: Vec::new(),
            strings: vec![0],
            next: 1,
        }
    }
}

fn linkage_raw(l: Linkage) -> u32 {
    match l {
        Linkage::Static => 0,
        Linkage::Global => 1,
        Linkage::Extern => 2,
        Linkage::Other(n) => n,
    }
}

fn kind_raw(k: Kind) -> u8 {
    use Kind::*;
    match k {
        Void => 0,
        Int => 1,
        Ptr => 2,
        Array => 3,
        Struct => 4,
        Union => 5,
        Enum => 6,
        Fwd => 7,
        Typedef => 8,
        Volatile => 9,
        Const => 10,
        Restrict => 11,
        Func => 12,
        FuncProto => 13,
        Var => 14,
        Datasec => 15,
        Float => 16,
        DeclTag => 17,
        TypeTag => 18,
        Enum64 => 19,
    }
}

/// The low and high 32-bit halves of a 64-bit value.
fn halves(v: u64) -> (u32, u32) {
    let b = v.to_le_bytes();
    (
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    )
}

impl BtfBuilder {
    /// The ID the next type will get (for self-references and cycles).
    pub fn next_id(&self) -> TypeId {
        TypeId(self.next)
    }

    /// Adds a string and returns its offset ("" is offset 0).
    pub fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    /// Writes a record as given: name offset, raw kind number, kind_flag, vlen, the
    /// size-or-type word, then `trailing` words.
    pub fn raw(
        &mut self,
        name_off: u32,
        kind: u8,
        kind_flag: bool,
        vlen: u16,
        size_or_type: u32,
        trailing: &[u32],
    ) -> TypeId {
        let info = u32::from(kind) << 24 | u32::from(kind_flag) << 31 | u32::from(vlen);
        for w in [name_off, info, size_or_type].iter().chain(trailing) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        let id = TypeId(self.next);
        self.next += 1;
        id
    }

    fn record(
        &mut self,
        name: &str,
        kind: Kind,
        kind_flag: bool,
        vlen: usize,
        size_or_type: u32,
        trailing: &[u32],
    ) -> TypeId {
        let name_off = self.string(name);
        let vlen = u16::try_from(vlen).unwrap_or(u16::MAX);
        self.raw(
            name_off,
            kind_raw(kind),
            kind_flag,
            vlen,
            size_or_type,
            trailing,
        )
    }

    /// `INT`: `size` bytes, `bits` value bits at bit offset 0.
    pub fn int(&mut self, name: &str, size: u32, encoding: IntEncoding, bits: u8) -> TypeId {
        self.int_at(name, size, encoding, 0, bits)
    }

    /// `INT` with a bit offset (an old-style bitfield's type).
    pub fn int_at(
        &mut self,
        name: &str,
        size: u32,
        encoding: IntEncoding,
        offset: u8,
        bits: u8,
    ) -> TypeId {
        let word = u32::from(encoding.0) << 24 | u32::from(offset) << 16 | u32::from(bits);
        self.record(name, Kind::Int, false, 0, size, &[word])
    }

    /// `PTR` to `target`.
    pub fn ptr(&mut self, target: TypeId) -> TypeId {
        self.record("", Kind::Ptr, false, 0, target.0, &[])
    }

    /// `ARRAY` of `nelems` `elem`s indexed by `index`.
    pub fn array(&mut self, elem: TypeId, index: TypeId, nelems: u32) -> TypeId {
        self.record("", Kind::Array, false, 0, 0, &[elem.0, index.0, nelems])
    }

    fn composite(
        &mut self,
        kind: Kind,
        name: &str,
        size: u32,
        members: &[(&str, TypeId, u32, u8)],
    ) -> TypeId {
        let kind_flag = members.iter().any(|m| m.3 != 0);
        let mut words = Vec::with_capacity(members.len() * 3);
        for &(n, ty, bit_offset, bits) in members {
            let off = if kind_flag {
                u32::from(bits) << 24 | (bit_offset & 0x00ff_ffff)
            } else {
                bit_offset
            };
            words.extend_from_slice(&[self.string(n), ty.0, off]);
        }
        self.record(name, kind, kind_flag, members.len(), size, &words)
    }

    /// `STRUCT` with members `(name, type, bit offset, bitfield size)`; kind_flag is set
    /// when any bitfield size is not 0. An empty name is an anonymous member.
    pub fn structure(
        &mut self,
        name: &str,
        size: u32,
        members: &[(&str, TypeId, u32, u8)],
    ) -> TypeId {
        self.composite(Kind::Struct, name, size, members)
    }

    /// `UNION`, as [`BtfBuilder::structure`].
    pub fn union(&mut self, name: &str, size: u32, members: &[(&str, TypeId, u32, u8)]) -> TypeId {
        self.composite(Kind::Union, name, size, members)
    }

    /// `ENUM` with 32-bit values (kind_flag = `signed`).
    pub fn enumeration(
        &mut self,
        name: &str,
        size: u32,
        signed: bool,
        values: &[(&str, i64)],
    ) -> TypeId {
        let mut words = Vec::new();
        for &(n, v) in values {
            let (lo, _) = halves(u64::from_le_bytes(v.to_le_bytes()));
            words.extend_from_slice(&[self.string(n), lo]);
        }
        self.record(name, Kind::Enum, signed, values.len(), size, &words)
    }

    /// `ENUM64` (kind_flag = `signed`); values are given as their 64-bit patterns.
    pub fn enum64(
        &mut self,
        name: &str,
        size: u32,
        signed: bool,
        values: &[(&str, u64)],
    ) -> TypeId {
        let mut words = Vec::new();
        for &(n, v) in values {
            let (lo, hi) = halves(v);
            words.extend_from_slice(&[self.string(n), lo, hi]);
        }
        self.record(name, Kind::Enum64, signed, values.len(), size, &words)
    }

    /// `FWD` of a struct, or of a union.
    pub fn fwd(&mut self, name: &str, union: bool) -> TypeId {
        self.record(name, Kind::Fwd, union, 0, 0, &[])
    }

    /// `TYPEDEF`.
    pub fn typedef(&mut self, name: &str, target: TypeId) -> TypeId {
        self.record(name, Kind::Typedef, false, 0, target.0, &[])
    }

    /// `VOLATILE`.
    pub fn volatile(&mut self, target: TypeId) -> TypeId {
        self.record("", Kind::Volatile, false, 0, target.0, &[])
    }

    /// `CONST`.
    pub fn constant(&mut self, target: TypeId) -> TypeId {
        self.record("", Kind::Const, false, 0, target.0, &[])
    }

    /// `RESTRICT`.
    pub fn restrict(&mut self, target: TypeId) -> TypeId {
        self.record("", Kind::Restrict, false, 0, target.0, &[])
    }

    /// `FUNC` whose prototype is `proto`.
    pub fn func(&mut self, name: &str, proto: TypeId, linkage: Linkage) -> TypeId {
        let vlen = usize::try_from(linkage_raw(linkage)).unwrap_or(0);
        self.record(name, Kind::Func, false, vlen, proto.0, &[])
    }

    /// `FUNC_PROTO` returning `ret` with parameters `(name, type)`; a last `("",
    /// TypeId::VOID)` means `...`.
    pub fn func_proto(&mut self, ret: TypeId, params: &[(&str, TypeId)]) -> TypeId {
        let mut words = Vec::new();
        for &(n, ty) in params {
            words.extend_from_slice(&[self.string(n), ty.0]);
        }
        self.record("", Kind::FuncProto, false, params.len(), ret.0, &words)
    }

    /// `VAR`.
    pub fn var(&mut self, name: &str, ty: TypeId, linkage: Linkage) -> TypeId {
        self.record(name, Kind::Var, false, 0, ty.0, &[linkage_raw(linkage)])
    }

    /// `DATASEC` with variables `(type, offset, size)`.
    pub fn datasec(&mut self, name: &str, size: u32, vars: &[(TypeId, u32, u32)]) -> TypeId {
        let words: Vec<u32> = vars.iter().flat_map(|v| [v.0.0, v.1, v.2]).collect();
        self.record(name, Kind::Datasec, false, vars.len(), size, &words)
    }

    /// `FLOAT`.
    pub fn float(&mut self, name: &str, size: u32) -> TypeId {
        self.record(name, Kind::Float, false, 0, size, &[])
    }

    /// `DECL_TAG` on `target` (component -1: the declaration itself).
    pub fn decl_tag(&mut self, name: &str, target: TypeId, component_idx: i32) -> TypeId {
        let idx = u32::from_le_bytes(component_idx.to_le_bytes());
        self.record(name, Kind::DeclTag, false, 0, target.0, &[idx])
    }

    /// `TYPE_TAG` on `target`.
    pub fn type_tag(&mut self, name: &str, target: TypeId) -> TypeId {
        self.record(name, Kind::TypeTag, false, 0, target.0, &[])
    }

    /// The blob: a 24-byte header, the type section, the string section.
    pub fn finish(&self) -> Vec<u8> {
        let type_len = u32::try_from(self.types.len()).unwrap_or(u32::MAX);
        let str_len = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(24 + self.types.len() + self.strings.len());
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [24, 0, type_len, type_len, str_len] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}
