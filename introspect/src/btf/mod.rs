//! BTF (BPF Type Format): the kernel's own description of its types, parsed by hand.
//!
//! A kernel built with `CONFIG_DEBUG_INFO_BTF=y` (Debian's is) carries every C type it was
//! compiled with (structures with member offsets, typedefs, enums, function prototypes with
//! parameter names) as a compact blob of about 4 MiB. It is in the vmlinux ELF's `.BTF`
//! section and, at run time, in guest memory between the symbols `__start_BTF` and
//! `__stop_BTF`. The format is Linux's `Documentation/bpf/btf.rst`.
//!
//! - [`Btf::parse`] reads a blob from any byte slice. For a running guest the caller reads
//!   the bytes from `__start_BTF` to `__stop_BTF` out of guest memory (through the symbol
//!   table and the page walker) and passes them here; this module does no guest I/O.
//! - [`Btf::from_elf`] finds the `.BTF` section of a vmlinux ELF (for Debian's bzImage,
//!   decompress it to ELF first: `vmm::kernel_symbols::kernel_elf`).
//!
//! Queries (module `lookup`): [`Btf::find`] a type by name and [`Kind`], [`Btf::resolve`]
//! through typedefs and qualifiers, [`Btf::size_of`], [`Btf::members`] of a struct or union
//! with byte and bit offsets and bitfield sizes, [`Btf::member`] by name (looking inside
//! anonymous struct and union members, as `task_struct` needs), [`Btf::member_path`] for
//! `a.b.c` with the cumulative offset, [`Btf::func_proto`] for a function's return and
//! parameter types by the function's name, and [`Btf::type_name`] for a short C-like name
//! (`struct file *`, `const char *`, `unsigned int`, `char[16]`).
//!
//! Only little-endian blobs are read (a big-endian one is a [`BtfError::BigEndian`]). A blob
//! is untrusted input: every record is bounds-checked and every type reference and string
//! offset validated at parse time (each failure a [`BtfError`] naming the type ID and byte
//! offset), memory grows at most linearly with the blob's size, and every query that follows
//! references (typedef chains, pointers, arrays, anonymous members) stops after
//! [`MAX_DEPTH`] steps with [`LookupError::TooDeep`], so cycles cannot make it loop.
//! Split BTF (kernel modules, whose IDs continue a base vmlinux BTF) is not supported.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use introspect::btf::{Btf, BtfBuilder, IntEncoding, Kind};
//! // struct task_struct { int state; int pid; }, as a kernel's .BTF would hold it.
//! let mut b = BtfBuilder::default();
//! let int = b.int("int", 4, IntEncoding::SIGNED, 32);
//! b.structure("task_struct", 8, &[("state", int, 0, 0), ("pid", int, 32, 0)]);
//! let blob = b.finish();
//! let btf = Btf::parse(&blob)?;
//! let task = btf.find("task_struct", Kind::Struct)?;
//! let pid = btf.member(task, "pid")?;
//! assert_eq!(pid.byte_offset(), 4);
//! assert_eq!(btf.type_name(pid.ty)?, "int");
//! # Ok(())
//! # }
//! ```

mod builder;
mod elf;
mod header;
mod lookup;
mod types;

#[cfg(test)]
mod tests;

pub use builder::BtfBuilder;
pub use header::Header;
pub use lookup::{Field, FuncProto};
pub use types::{
    ArrayInfo, Enumerator, IntEncoding, Kind, Linkage, Member, Param, Type, VarSecinfo,
};

use header::Strings;
use types::{Item, Rec};

/// How many references a query follows (typedef chains, nested arrays, anonymous members,
/// pointer declarators) before it gives up with [`LookupError::TooDeep`]. The kernel's own
/// verifier stops at 32 as well (`MAX_RESOLVE_DEPTH`).
pub const MAX_DEPTH: usize = 32;

/// How many steps (types visited, members scanned) one query may take before it gives up
/// with [`LookupError::TooComplex`]: a hostile blob can make a tree of references that is
/// shallow but exponentially wide.
pub const MAX_WORK: usize = 1 << 20;

/// The most type IDs a blob may hold (`BTF_MAX_TYPE`).
pub const MAX_TYPES: u32 = 0x000f_ffff;

/// The size of a pointer: hvprobe's guests are x86_64 (BTF itself does not record it).
pub const POINTER_SIZE: u64 = 8;

/// A type's ID: its index in the type section, counting from 1. ID 0 is `void`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TypeId(pub u32);

impl TypeId {
    /// `void` (the return type of a function returning nothing, the target of `void *`).
    pub const VOID: TypeId = TypeId(0);

    fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for TypeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}]", self.0)
    }
}

/// Why a blob is not BTF this parser can read. Offsets are bytes from the start of the
/// blob; type IDs are the record's position (from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    /// Shorter than the fixed part of the header.
    #[error("Truncated BTF: {len} bytes, shorter than the 24-byte header")]
    TooShort {
        /// The blob's length.
        len: usize,
    },
    /// The first two bytes are not the BTF magic 0xeb9f.
    #[error("Not BTF: magic {magic:#06x} at offset 0, expected 0xeb9f")]
    BadMagic {
        /// The 16-bit value read little-endian.
        magic: u16,
    },
    /// The magic is byte-swapped: BTF of a big-endian target.
    #[error("Big-endian BTF (magic 0x9feb at offset 0): only little-endian BTF is supported")]
    BigEndian,
    /// A version other than 1.
    #[error("Unsupported BTF version {version} at offset 2, expected 1")]
    UnsupportedVersion {
        /// The header's version byte.
        version: u8,
    },
    /// `hdr_len` is smaller than the header or larger than the blob.
    #[error("Corrupt BTF header: hdr_len {hdr_len} at offset 4 (blob is {len} bytes)")]
    BadHeaderLen {
        /// The header's length field.
        hdr_len: u32,
        /// The blob's length.
        len: usize,
    },
    /// The type or string section lies (partly) outside the blob.
    #[error(
        "Corrupt BTF header: {section} section at {offset:#x}+{size:#x} is past the end of the {len}-byte blob"
    )]
    SectionOutOfBounds {
        /// `"type"` or `"string"`.
        section: &'static str,
        /// The section's offset from the start of the blob.
        offset: u64,
        /// The section's length.
        size: u64,
        /// The blob's length.
        len: usize,
    },
    /// The string section breaks the format's rules.
    #[error("Corrupt BTF string section: {reason} at offset {offset:#x}")]
    BadStrings {
        /// What is wrong.
        reason: &'static str,
        /// Where (from the start of the blob).
        offset: u64,
    },
    /// A record (or its trailing data) runs past the end of the type section.
    #[error(
        "Truncated BTF: type {id} at offset {offset:#x} needs {need} bytes, {have} left in the type section"
    )]
    Truncated {
        /// The record's type ID.
        id: u32,
        /// The record's offset.
        offset: u64,
        /// Bytes the record needs.
        need: u64,
        /// Bytes left in the type section.
        have: u64,
    },
    /// A record's kind is not one of the 19 BTF kinds (or is 0, which only ID 0 may be).
    #[error("Corrupt BTF: type {id} at offset {offset:#x} has unknown kind {kind}")]
    UnknownKind {
        /// The record's type ID.
        id: u32,
        /// The record's offset.
        offset: u64,
        /// The kind field.
        kind: u8,
    },
    /// A name offset that does not start a string in the string section.
    #[error(
        "Corrupt BTF: type {id} at offset {offset:#x} names string offset {name_off:#x}, which does not start a string"
    )]
    BadName {
        /// The type ID whose record (or member, parameter, ...) holds the offset.
        id: u32,
        /// That record's offset.
        offset: u64,
        /// The bad string offset.
        name_off: u32,
    },
    /// A reference to a type ID that does not exist.
    #[error(
        "Corrupt BTF: type {id} at offset {offset:#x} refers to type {target}, but there are only {count} types"
    )]
    BadTypeRef {
        /// The referring type's ID.
        id: u32,
        /// Its record's offset.
        offset: u64,
        /// The missing ID.
        target: u32,
        /// How many IDs exist (including void).
        count: u32,
    },
    /// More than [`MAX_TYPES`] records.
    #[error("Corrupt BTF: more than {MAX_TYPES} types (at offset {offset:#x})")]
    TooManyTypes {
        /// The offset of the first record past the limit.
        offset: u64,
    },
    /// The ELF file could not be read.
    #[error("Cannot read the vmlinux ELF for its BTF")]
    Elf(#[from] crate::elf::ElfError),
    /// The ELF file has no `.BTF` section.
    #[error(
        "The vmlinux ELF has no .BTF section (kernel built without CONFIG_DEBUG_INFO_BTF, or section headers stripped)"
    )]
    NoBtfSection,
}

/// Why a query on parsed BTF failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No type of that name and kind.
    #[error("No BTF type {kind} '{name}'")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The kind asked for.
        kind: Kind,
    },
    /// The ID is past the last type.
    #[error("No BTF type with ID {0}")]
    NoSuchType(TypeId),
    /// A struct or union was needed.
    #[error("BTF type {id} is {kind}, not a struct or union")]
    NotComposite {
        /// The type (after resolving typedefs and qualifiers).
        id: TypeId,
        /// Its kind.
        kind: Kind,
    },
    /// No member of that name (directly or in anonymous members).
    #[error("BTF type {id} ('{type_name}') has no member '{member}'")]
    NoMember {
        /// The struct or union searched.
        id: TypeId,
        /// Its name ("" if anonymous).
        type_name: String,
        /// The member asked for.
        member: String,
    },
    /// A member path with an empty component (`a..b`, a leading or trailing dot).
    #[error("Bad member path '{0}': empty component")]
    BadPath(String),
    /// The type has no size (void, a function, a forward declaration, a tag).
    #[error("BTF type {id} is {kind}, which has no size")]
    NoSize {
        /// The type.
        id: TypeId,
        /// Its kind.
        kind: Kind,
    },
    /// A size computation overflowed 64 bits (a hostile array).
    #[error("Size of BTF type {0} overflows")]
    SizeOverflow(TypeId),
    /// A FUNC whose type is not a FUNC_PROTO.
    #[error("BTF function {id} points to type {proto}, which is {kind}, not FUNC_PROTO")]
    NotFuncProto {
        /// The FUNC.
        id: TypeId,
        /// What it points to.
        proto: TypeId,
        /// That type's kind.
        kind: Kind,
    },
    /// A chain of references longer than [`MAX_DEPTH`]: a cycle, or a hostile blob.
    #[error("BTF type {0}: more than {MAX_DEPTH} nested references (a cycle?)")]
    TooDeep(TypeId),
    /// A query needed more than [`MAX_WORK`] steps, or built a name longer than 64 KiB.
    #[error("BTF type {0}: too many references to follow (more than {MAX_WORK} steps)")]
    TooComplex(TypeId),
}

/// Parsed BTF: every type record, decoded and validated, and the string section. Owns its
/// data (a copy of the blob's strings and decoded records), so it does not borrow the input.
#[derive(Debug, Clone)]
pub struct Btf {
    header: Header,
    strings: Strings,
    /// Index = type ID; `types[0]` is void.
    types: Vec<Rec>,
    /// Trailing records (members, parameters, enumerators, section variables, arrays),
    /// each type's a contiguous run.
    items: Vec<Item>,
    /// IDs of the named types, sorted by (name, kind, ID).
    by_name: Vec<TypeId>,
}

impl Btf {
    /// Parses a BTF blob (header, type section, string section), validating every record.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let header = Header::parse(data)?;
        let strings = Strings::parse(data, &header)?;
        let (types, items) = types::parse_types(data, &header, &strings)?;
        let mut btf = Btf {
            header,
            strings,
            types,
            items,
            by_name: Vec::new(),
        };
        btf.index_names();
        Ok(btf)
    }

    /// Parses the `.BTF` section of a vmlinux ELF.
    pub fn from_elf(elf: &[u8]) -> Result<Btf, BtfError> {
        Btf::parse(elf::btf_section(elf)?)
    }

    /// The header as read.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The number of type IDs, including void (ID 0): the last ID is `len() - 1`.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether the blob has no types besides void.
    pub fn is_empty(&self) -> bool {
        self.types.len() <= 1
    }

    /// Every type, in ID order, starting with void.
    pub fn types(&self) -> impl Iterator<Item = Type<'_>> + '_ {
        (0..self.types.len()).filter_map(|i| {
            let id = TypeId(u32::try_from(i).ok()?);
            self.get(id).ok()
        })
    }

    fn index_names(&mut self) {
        let mut ids: Vec<TypeId> = (1..self.types.len())
            .filter(|&i| self.types.get(i).is_some_and(|r| !r.name.is_empty()))
            .filter_map(|i| u32::try_from(i).ok().map(TypeId))
            .collect();
        ids.sort_by(|&a, &b| {
            let (ra, rb) = (self.rec(a), self.rec(b));
            let name = |r: Option<&Rec>| r.map_or("", |r| self.strings.get(r.name));
            name(ra)
                .cmp(name(rb))
                .then_with(|| ra.map(|r| r.kind).cmp(&rb.map(|r| r.kind)))
                .then(a.cmp(&b))
        });
        self.by_name = ids;
    }

    fn rec(&self, id: TypeId) -> Option<&Rec> {
        self.types.get(id.index())
    }
}
