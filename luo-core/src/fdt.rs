// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Flattened device trees (FDT, DTB v17) for LUO's 6.19/7.0 `luo-v1` handover page: a tree
//! model, a writer on rust-vmm's `vm-fdt`, and our own bounds-checked parser with typed errors
//! (every offset checked against the blob: the corrupt-image and fuzz suites feed it
//! arbitrary bytes).

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
const HEADER: usize = 40;
const MAX_DEPTH: usize = 16;

/// One node: its name, properties (name, raw value) and children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Unit name (`""` for the root).
    pub name: String,
    /// Properties in order.
    pub props: Vec<(String, Vec<u8>)>,
    /// Child nodes in order.
    pub children: Vec<Node>,
}

impl Node {
    /// A node called `name`.
    pub fn new(name: &str) -> Node {
        Node {
            name: name.to_owned(),
            ..Node::default()
        }
    }

    /// Adds a string property (NUL-terminated).
    pub fn prop_str(mut self, name: &str, v: &str) -> Node {
        let mut b = v.as_bytes().to_vec();
        b.push(0);
        self.props.push((name.to_owned(), b));
        self
    }

    /// Adds a native-endian u64 property (LUO's convention, unlike FDT cells).
    pub fn prop_u64(mut self, name: &str, v: u64) -> Node {
        self.props.push((name.to_owned(), v.to_ne_bytes().to_vec()));
        self
    }

    /// Adds a child.
    pub fn child(mut self, c: Node) -> Node {
        self.children.push(c);
        self
    }

    /// The raw value of property `name`.
    pub fn prop(&self, name: &str) -> Option<&[u8]> {
        self.props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Property `name` as a NUL-terminated string.
    pub fn prop_as_str(&self, name: &str) -> Option<&str> {
        let v = self.prop(name)?;
        let end = v.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&v[..end]).ok()
    }

    /// Property `name` as a native-endian u64 (exactly 8 bytes).
    pub fn prop_as_u64(&self, name: &str) -> Option<u64> {
        Some(u64::from_ne_bytes(self.prop(name)?.try_into().ok()?))
    }

    /// The child called `name`.
    pub fn find(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }
}

/// Why a blob is not a valid FDT.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FdtError {
    /// Smaller than its header or its `totalsize`.
    #[error("FDT truncated: {0}")]
    Truncated(&'static str),
    /// Wrong magic.
    #[error("bad FDT magic {0:#x}")]
    Magic(u32),
    /// Unsupported version.
    #[error("unsupported FDT version {0}")]
    Version(u32),
    /// A block lies outside the blob.
    #[error("FDT {0} block out of bounds")]
    Bounds(&'static str),
    /// An unknown token or a malformed structure.
    #[error("FDT structure: {0}")]
    Structure(&'static str),
    /// A tree the writer refuses (a name the format does not allow).
    #[error("FDT not written: {0}")]
    Write(String),
}

impl From<vm_fdt::Error> for FdtError {
    fn from(e: vm_fdt::Error) -> FdtError {
        FdtError::Write(e.to_string())
    }
}

fn emit(n: &Node, w: &mut vm_fdt::FdtWriter) -> Result<(), FdtError> {
    let node = w.begin_node(&n.name)?;
    for (name, v) in &n.props {
        w.property(name, v)?;
    }
    for c in &n.children {
        emit(c, w)?;
    }
    w.end_node(node)?;
    Ok(())
}

/// Serializes `root` as a DTB (version 17), with rust-vmm's `vm-fdt` writer (which refuses
/// names the FDT format does not allow).
pub fn write(root: &Node) -> Result<Vec<u8>, FdtError> {
    let mut w = vm_fdt::FdtWriter::new()?;
    emit(root, &mut w)?;
    Ok(w.finish()?)
}

fn be32(b: &[u8], at: usize) -> Result<u32, FdtError> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes(s.try_into().unwrap_or([0; 4])))
        .ok_or(FdtError::Structure("token past the end"))
}

struct Parser<'a> {
    st: &'a [u8],
    strings: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn token(&mut self) -> Result<u32, FdtError> {
        loop {
            let t = be32(self.st, self.pos)?;
            self.pos += 4;
            if t != FDT_NOP {
                return Ok(t);
            }
        }
    }

    fn cstr(b: &[u8], at: usize) -> Result<(&str, usize), FdtError> {
        let rest = b
            .get(at..)
            .ok_or(FdtError::Structure("name past the end"))?;
        let end = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or(FdtError::Structure("unterminated name"))?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| FdtError::Structure("name"))?;
        Ok((s, end + 1))
    }

    fn node(&mut self, depth: usize) -> Result<Node, FdtError> {
        if depth > MAX_DEPTH {
            return Err(FdtError::Structure("too deep"));
        }
        let (name, len) = Self::cstr(self.st, self.pos)?;
        let mut n = Node::new(name);
        self.pos = (self.pos + len).next_multiple_of(4);
        loop {
            match self.token()? {
                FDT_PROP => {
                    let len = be32(self.st, self.pos)? as usize;
                    let nameoff = be32(self.st, self.pos + 4)? as usize;
                    let v = self
                        .st
                        .get(self.pos + 8..self.pos + 8 + len)
                        .ok_or(FdtError::Structure("property past the end"))?;
                    let (pname, _) = Self::cstr(self.strings, nameoff)?;
                    n.props.push((pname.to_owned(), v.to_vec()));
                    self.pos = (self.pos + 8 + len).next_multiple_of(4);
                }
                FDT_BEGIN_NODE => {
                    let c = self.node(depth + 1)?;
                    n.children.push(c);
                }
                FDT_END_NODE => return Ok(n),
                _ => return Err(FdtError::Structure("unexpected token")),
            }
        }
    }
}

/// Parses a DTB (versions 16 and 17), checking every offset against the blob.
pub fn parse(b: &[u8]) -> Result<Node, FdtError> {
    if b.len() < HEADER {
        return Err(FdtError::Truncated("header"));
    }
    let h = |i: usize| be32(b, i * 4);
    let magic = h(0)?;
    if magic != FDT_MAGIC {
        return Err(FdtError::Magic(magic));
    }
    let total = h(1)? as usize;
    if total > b.len() || total < HEADER {
        return Err(FdtError::Truncated("totalsize"));
    }
    let version = h(5)?;
    if !(16..=17).contains(&version) {
        return Err(FdtError::Version(version));
    }
    let (off_st, off_str) = (h(2)? as usize, h(3)? as usize);
    let (size_str, size_st) = (h(8)? as usize, h(9)? as usize);
    let st = off_st
        .checked_add(size_st)
        .filter(|&e| e <= total)
        .map(|e| &b[off_st..e])
        .ok_or(FdtError::Bounds("structure"))?;
    let strings = off_str
        .checked_add(size_str)
        .filter(|&e| e <= total)
        .map(|e| &b[off_str..e])
        .ok_or(FdtError::Bounds("strings"))?;
    let mut p = Parser {
        st,
        strings,
        pos: 0,
    };
    if p.token()? != FDT_BEGIN_NODE {
        return Err(FdtError::Structure("no root node"));
    }
    let root = p.node(0)?;
    if p.token()? != FDT_END {
        return Err(FdtError::Structure("no FDT_END"));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_format_forbids_are_refused_by_the_writer() {
        let t = Node::new("").prop_u64("", 7);
        assert!(matches!(write(&t), Err(FdtError::Write(_))));
        let t = Node::new("").child(Node::new("a/b"));
        assert!(matches!(write(&t), Err(FdtError::Write(_))));
    }

    #[test]
    fn round_trip_and_corruptions() {
        let t = Node::new("")
            .prop_str("compatible", "luo-v1")
            .prop_u64("liveupdate-number", 7)
            .child(
                Node::new("luo-session")
                    .prop_str("compatible", "luo-session-v2")
                    .prop_u64("luo-session-header", 0x1000),
            );
        let b = write(&t).unwrap();
        let p = parse(&b).unwrap();
        assert_eq!(p, t);
        assert_eq!(p.prop_as_u64("liveupdate-number"), Some(7));
        assert_eq!(
            p.find("luo-session").unwrap().prop_as_str("compatible"),
            Some("luo-session-v2")
        );
        // Every truncation and every single-byte corruption is an error or a tree, never a
        // panic.
        for n in 0..b.len() {
            let _ = parse(&b[..n]);
            for bit in [0x01u8, 0x80] {
                let mut c = b.clone();
                c[n] ^= bit;
                let _ = parse(&c);
            }
        }
        assert_eq!(parse(&[0u8; 64]), Err(FdtError::Magic(0)));
    }
}
