// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Fuzz target bodies. Each takes arbitrary bytes and must never panic,
//! hang or allocate without bound; they assert the invariants that must
//! hold whatever the input.

use luo_schema::diff::{diff_component, table};
use luo_spec::diag::Severity;
use luo_spec::layout::Layouts;
use luo_spec::model::load_texts;
use luo_spec::{generate, valid};

/// Split input into a component file and an optional kernel file at the
/// first `\n%%\n`.
fn split(text: &str) -> (&str, Option<&str>) {
    match text.split_once("\n%%\n") {
        Some((a, b)) => (a, Some(b)),
        None => (text, None),
    }
}

/// The spec pipeline on arbitrary text: parse, validate, and — when the
/// spec is clean — generate every output. Diagnostics must render and
/// point inside the file.
pub fn spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (component, kernel) = split(text);
    let mut files = vec![("spec/fuzz.toml", component)];
    if let Some(k) = kernel {
        files.push(("kernels/fuzz.toml", k));
    }
    let (spec, mut diags) = load_texts(&files);
    let layouts = Layouts::new();
    valid::check(&spec, &layouts, &mut diags);
    for d in diags.iter() {
        if let Some(file) = d.file {
            assert!(
                d.span.start <= spec.sources.text(file).len() + 1,
                "diagnostic span outside the file: {d:?}"
            );
        }
    }
    let rendered = diags.render(&spec.sources, Severity::Note);
    assert!(diags.iter().next().is_none() || !rendered.is_empty());
    if !diags.has_errors() {
        let out = generate::generate(&spec, &layouts);
        assert!(out.keys().any(|p| p.ends_with("spec.schema.json")));
    }
}

/// Constant expressions: parse, print, re-parse to the same tree.
pub fn expr(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = luo_spec::expr::Expr::parse(text) {
        let printed = e.to_c();
        let again = luo_spec::expr::Expr::parse(&printed).expect("printed expression re-parses");
        assert_eq!(again.to_c(), printed);
    }
}

/// Field types: parse, print, re-parse to the same type.
pub fn ty(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = luo_spec::ty::Ty::parse(text) {
        let printed = t.to_string();
        assert_eq!(
            luo_spec::ty::Ty::parse(&printed).as_ref(),
            Ok(&t),
            "`{printed}` does not re-parse to the same type"
        );
    }
}

/// The `.liveupdate_features` table reader, raw and inside ELF files: any
/// table that decodes re-encodes to the same bytes, and checking an update
/// against itself never fails for feature reasons it cannot explain.
pub fn abi_table(data: &[u8]) {
    // The multi-kernel section is parsed by the same code paths.
    let _ = table::decode_kernels(data);
    if let Ok(entries) = table::from_file_bytes(data) {
        if !data.starts_with(b"\x7fELF") {
            assert_eq!(table::encode(&entries), data, "decode/encode round trip");
        }
        let verdicts = table::check_update(&entries, &entries);
        assert_eq!(
            verdicts.len(),
            entries
                .iter()
                .filter(|e| e.kind == table::KIND_WRITES)
                .count()
        );
    }
}

/// Snapshot JSON: anything that parses as two snapshots diffs without panic.
pub fn snapshot_diff(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = split(text);
    let Ok(old) = serde_json::from_str::<luo_spec::render::schema::ComponentSnapshot>(a) else {
        return;
    };
    let new = b
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or_else(|| old.clone());
    let d = diff_component(&old, &new);
    if b.is_none() {
        assert!(
            d.facts.is_empty(),
            "a snapshot differs from itself: {:?}",
            d.facts
        );
    }
}

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// A saved handover image (the model's KHO state plus the LUO subtree):
/// decode and inspect must never panic; an image that decodes re-encodes
/// to one that inspects the same.
pub fn handover_image(data: &[u8]) {
    let Ok(img) = luo_core::image::Image::from_bytes(data) else {
        return;
    };
    let first = luo_sim::inspect::inspect(&img);
    let again =
        luo_core::image::Image::from_bytes(&img.to_bytes()).expect("a decoded image re-encodes");
    let second = luo_sim::inspect::inspect(&again);
    match (first, second) {
        (Ok(a), Ok(b)) => assert_eq!(a.to_json(), b.to_json()),
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "re-encoding changed the verdict: {:?} vs {:?}",
            a.is_ok(),
            b.is_ok()
        ),
    }
}

/// Booting a kernel from a saved image (`luo boot`): kernel `next` (which reads every
/// format) boots from the memory the image describes, retrieves every session and file and
/// finishes every session. Whatever the image holds — sizes, counts, addresses, records —
/// this must end in a typed error or a report, never a panic, an abort or an allocation the
/// image alone sizes; and a kernel that booted agrees with the decoder on the sessions.
pub fn boot_image(data: &[u8]) {
    let Ok(img) = luo_core::image::Image::from_bytes(data) else {
        return;
    };
    if let Ok(report) = luo_sim::boot_image::boot_image(&img, luo_core::KernelVersion::Next) {
        let decoded = luo_sim::inspect::inspect(&img).expect("a booted image decodes");
        assert_eq!(report.sessions.len(), decoded.sessions.len());
    }
}

/// Physical address where [`fdt_luo`] maps its input.
pub const FDT_MEM_BASE: u64 = 0x1000;

/// The input of [`fdt_luo`] as physical memory at [`FDT_MEM_BASE`].
struct FlatMem<'a>(&'a [u8]);

impl luo_core::blocks::PhysRead for FlatMem<'_> {
    fn read_phys(&self, phys: u64, buf: &mut [u8]) -> Result<(), luo_abi::Errno> {
        let src = phys
            .checked_sub(FDT_MEM_BASE)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| Some(o..o.checked_add(buf.len())?))
            .and_then(|r| self.0.get(r))
            .ok_or(luo_abi::Errno::EFAULT)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    /// All of the input is memory the previous kernel preserved; nothing else is.
    fn is_preserved(&self, phys: u64, len: usize) -> bool {
        phys.checked_sub(FDT_MEM_BASE)
            .and_then(|o| o.checked_add(len as u64))
            .is_some_and(|end| end <= self.0.len() as u64)
    }
}

/// The 6.19/7.0 `luo-v1` handover reader. The input is physical memory at
/// [`FDT_MEM_BASE`], all of it preserved, whose first bytes are the `"LUO"` FDT;
/// the subtree size the reader is given is the FDT header's `totalsize`, not
/// capped, so sizes beyond the input (up to 4 GiB) reach the reader and must be
/// refused before anything of that size is allocated. The FDT parser must not
/// panic, a tree it parses must write back to one that parses the same, and
/// the LUO reader (the FDT's nodes and properties, the session area and its
/// entries, the FLB area) must give a typed error or an image whose every
/// count is within the format's limits.
pub fn fdt_luo(data: &[u8]) {
    use luo_core::fdt;
    use luo_generated::luo::v1;
    let size = data
        .get(4..8)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    if let Ok(tree) = fdt::parse(&data[..size.min(data.len())]) {
        // The writer refuses names the format forbids, which the parser lets through.
        if let Ok(again) = fdt::write(&tree) {
            assert_eq!(
                fdt::parse(&again).as_ref(),
                Ok(&tree),
                "a parsed FDT writes back to the same tree"
            );
        }
    }
    let mem = FlatMem(data);
    let flavour = luo_core::fdt_luo::flavour(&mem, FDT_MEM_BASE, size);
    if let Ok((inc, pages)) = luo_core::fdt_luo::read(&mem, FDT_MEM_BASE, size) {
        assert!(flavour.is_ok(), "read accepts what flavour refuses");
        assert!(inc.sessions.len() as u64 <= v1::LUO_SESSION_MAX);
        for s in &inc.sessions {
            assert!(s.count <= v1::LUO_FILE_MAX && !s.name.contains(&0));
        }
        assert!(
            inc.flbs
                .as_ref()
                .is_none_or(|f| f.len() as u64 <= luo_generated::luo::v1_flb::LUO_FLB_MAX)
        );
        assert_eq!(pages[0], FDT_MEM_BASE);
    }
}

/// The memfd handover record of every version: the first byte picks the
/// version (`memfd-v1`, `memfd-v2`, next), the rest is the record. Decoding
/// never panics; a record that decodes re-encodes to one that decodes to
/// the same values, and a short record is refused. The decoder is the memfd
/// handler's own (what RETRIEVE_FD accepts).
pub fn memfd_format(data: &[u8]) {
    use luo_handlers::memfd::{RecordView, Version, decode, encode, record_size};
    use zerocopy::IntoBytes;
    let key = |s: &RecordView| {
        (
            s.pos,
            s.size,
            s.seals,
            s.nr_folios,
            s.folios.as_bytes().to_vec(),
        )
    };
    let Some((&v, rest)) = data.split_first() else {
        return;
    };
    let version = [Version::V1, Version::V2, Version::Next][usize::from(v % 3)];
    let size = record_size(version);
    let r = decode(version, rest);
    if rest.len() < size {
        assert!(r.is_err(), "a {}-byte record accepted", rest.len());
    }
    let Ok(s) = r else { return };
    let enc = encode(version, &s).expect("a decoded record re-encodes");
    assert_eq!(enc.len(), size);
    let back = decode(version, &enc).expect("a re-encoded record decodes");
    assert_eq!(key(&back), key(&s), "{} round trip", version.compatible());
}

/// Every target by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("spec", spec),
    ("expr", expr),
    ("ty", ty),
    ("abi_table", abi_table),
    ("snapshot_diff", snapshot_diff),
    ("handover_image", handover_image),
    ("boot_image", boot_image),
    ("fdt_luo", fdt_luo),
    ("memfd_format", memfd_format),
    ("uapi", uapi),
];

/// A little-endian reader over fuzz input; exhausted input reads as zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u8(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        a.to_vec()
    }
}

/// What a preserved file is, to check it after the kexec.
#[derive(Clone, Debug, PartialEq)]
enum Preserved {
    Test(u64),
    Memfd(Vec<u8>),
}

/// A session fd the model knows.
#[derive(Clone, Debug)]
struct SessionFd {
    name: Vec<u8>,
    incoming: bool,
}

/// The stateful uAPI target's world: the kernel and a model of what it must
/// hand over.
struct World {
    k: luo_core::Kernel,
    opts: luo_core::BootOptions,
    /// Every fd handed out in this kernel (closed ones included: they must give `EBADF`).
    fds: Vec<i32>,
    files: std::collections::HashMap<i32, Preserved>,
    sessions: std::collections::HashMap<i32, SessionFd>,
    /// Outgoing sessions by name: token → file.
    out: std::collections::BTreeMap<Vec<u8>, std::collections::BTreeMap<u64, Preserved>>,
    /// What the previous kernel handed over, and which names were retrieved.
    expected: std::collections::BTreeMap<Vec<u8>, std::collections::BTreeMap<u64, Preserved>>,
    retrieved: std::collections::BTreeSet<Vec<u8>>,
}

impl World {
    fn boot(opts: luo_core::BootOptions, h: Option<luo_core::Handover>) -> luo_core::Kernel {
        let k = luo_core::Kernel::boot(&opts, h).expect("a model handover boots");
        luo_testing::register(&k, true).expect("register the test handler");
        k
    }

    fn pick_fd(&self, inp: &mut Input) -> i32 {
        let b = inp.u8();
        if b >= 0xf0 || self.fds.is_empty() {
            // Some fds that were never handed out.
            return i32::from(b) - 0xf4;
        }
        self.fds[usize::from(b) % self.fds.len()]
    }

    fn pick_session(&self, inp: &mut Input) -> i32 {
        let mut s: Vec<i32> = self.sessions.keys().copied().collect();
        s.sort_unstable();
        match s.len() {
            0 => self.pick_fd(inp),
            n => s[usize::from(inp.u8()) % n],
        }
    }

    fn name(inp: &mut Input) -> Vec<u8> {
        let b = inp.u8();
        if b < 0xf0 {
            format!("s{}", b % 4).into_bytes()
        } else {
            // An arbitrary name, NUL-padded or not.
            inp.bytes(usize::from(b - 0xf0) * 8)
        }
    }

    /// Builds the argument bytes of `cmd`: the well-formed struct, or (when
    /// `raw`) one with its `size` and length taken from the input and
    /// arbitrary trailing bytes.
    fn arg(inp: &mut Input, mut bytes: Vec<u8>) -> Vec<u8> {
        let mode = inp.u8();
        if mode < 0xe0 {
            return bytes;
        }
        let len = usize::from(inp.u8());
        bytes.resize(len, 0);
        if mode & 1 != 0 && len >= 4 {
            let size = u32::from(inp.u8());
            bytes[..4].copy_from_slice(&size.to_ne_bytes());
        }
        if mode & 2 != 0 && !bytes.is_empty() {
            let at = usize::from(inp.u8()) % bytes.len();
            bytes[at] = inp.u8();
        }
        bytes
    }

    fn ioctl(&mut self, fd: i32, cmd: u32, arg: &mut [u8]) -> Result<(), luo_abi::Errno> {
        let r = self.k.ioctl(fd, cmd, arg);
        if let Err(e) = r {
            // Only errnos the uAPI documents.
            use luo_abi::Errno as E;
            assert!(
                [
                    E::EBADF,
                    E::EINVAL,
                    E::ENOTTY,
                    E::EFAULT,
                    E::E2BIG,
                    E::EEXIST,
                    E::ENOENT,
                    E::EBUSY,
                    E::ENOSPC,
                    E::ENOMEM,
                    E::EOPNOTSUPP,
                    E::EPERM,
                    E::EIO,
                    E::ENAMETOOLONG,
                    E::EMFILE,
                ]
                .contains(&e),
                "unexpected errno {e:?} from cmd {cmd:#x}"
            );
        }
        r
    }

    fn step(&mut self, inp: &mut Input, op: u8) {
        use luo_generated::uapi::v2::{
            LIVEUPDATE_SESSION_FINISH, LIVEUPDATE_SESSION_GET_NAME, LIVEUPDATE_SESSION_PRESERVE_FD,
            LIVEUPDATE_SESSION_RETRIEVE_FD, liveupdate_session_get_name,
        };
        use luo_generated::uapi::{
            LIVEUPDATE_IOCTL_CREATE_SESSION, LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
            liveupdate_ioctl_create_session, liveupdate_session_finish,
            liveupdate_session_preserve_fd, liveupdate_session_retrieve_fd,
        };
        use zerocopy::{FromBytes, FromZeros, IntoBytes};
        match op % 11 {
            0 => {
                if let Ok(fd) = self.k.open_dev() {
                    self.fds.push(fd);
                }
            }
            1 | 2 => {
                // CREATE_SESSION (1) or RETRIEVE_SESSION (2) on some fd.
                let dev = self.pick_fd(inp);
                let name = Self::name(inp);
                let mut a = liveupdate_ioctl_create_session::new_zeroed();
                a.size = size_of_val(&a) as u32;
                let n = name.len().min(64);
                a.name[..n].copy_from_slice(&name[..n]);
                let mut arg = Self::arg(inp, a.as_bytes().to_vec());
                let cmd = if op % 11 == 1 {
                    LIVEUPDATE_IOCTL_CREATE_SESSION
                } else {
                    LIVEUPDATE_IOCTL_RETRIEVE_SESSION
                };
                if self.ioctl(dev, cmd, &mut arg).is_ok() {
                    let a = liveupdate_ioctl_create_session::read_from_prefix(&arg)
                        .expect("a successful call had the whole struct")
                        .0;
                    let end = a.name.iter().position(|&b| b == 0).expect("NUL-terminated");
                    let name = a.name[..end].to_vec();
                    let incoming = cmd == LIVEUPDATE_IOCTL_RETRIEVE_SESSION;
                    if incoming {
                        assert!(
                            self.expected.contains_key(&name)
                                && self.retrieved.insert(name.clone()),
                            "retrieved {name:?}, not handed over or retrieved before"
                        );
                    } else {
                        assert!(
                            self.out.insert(name.clone(), Default::default()).is_none(),
                            "two outgoing sessions called {name:?}"
                        );
                    }
                    self.fds.push(a.fd);
                    self.sessions.insert(a.fd, SessionFd { name, incoming });
                }
            }
            3 => {
                if let Ok(fd) = self.k.test_file(u64::from(inp.u8())) {
                    let v = self
                        .k
                        .file(fd)
                        .expect("new fd")
                        .test_value()
                        .expect("test file");
                    self.files.insert(fd, Preserved::Test(v));
                    self.fds.push(fd);
                }
            }
            4 => {
                let len = usize::from(inp.u8()) * 97;
                let seed = inp.u8();
                let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
                if let Ok(fd) = self.k.memfd_create("fuzz") {
                    self.k.pwrite(fd, 0, &data).expect("pwrite to a new memfd");
                    self.files.insert(fd, Preserved::Memfd(data));
                    self.fds.push(fd);
                }
            }
            5 => {
                if let Ok(fd) = self.k.open_null() {
                    self.fds.push(fd);
                }
            }
            6 => {
                // PRESERVE_FD
                let s = self.pick_session(inp);
                let fd = self.pick_fd(inp);
                let token = u64::from(inp.u8() % 8);
                let a = liveupdate_session_preserve_fd {
                    size: 16,
                    fd,
                    token: token.into(),
                };
                let mut arg = Self::arg(inp, a.as_bytes().to_vec());
                if self
                    .ioctl(s, LIVEUPDATE_SESSION_PRESERVE_FD, &mut arg)
                    .is_ok()
                {
                    let a = liveupdate_session_preserve_fd::read_from_prefix(&arg)
                        .expect("whole")
                        .0;
                    let sess = self.sessions.get(&s).expect("a session fd");
                    assert!(!sess.incoming, "PRESERVE_FD on an incoming session");
                    let file = self
                        .files
                        .get(&a.fd)
                        .expect("only test files and memfds preserve");
                    let tokens = self.out.get_mut(&sess.name).expect("outgoing");
                    assert!(
                        tokens.insert(a.token.get(), file.clone()).is_none(),
                        "token {} preserved twice",
                        a.token.get()
                    );
                }
            }
            7 => {
                // RETRIEVE_FD
                let s = self.pick_session(inp);
                let token = u64::from(inp.u8() % 8);
                let a = liveupdate_session_retrieve_fd {
                    size: 16,
                    fd: -1,
                    token: token.into(),
                };
                let mut arg = Self::arg(inp, a.as_bytes().to_vec());
                if self
                    .ioctl(s, LIVEUPDATE_SESSION_RETRIEVE_FD, &mut arg)
                    .is_ok()
                {
                    let a = liveupdate_session_retrieve_fd::read_from_prefix(&arg)
                        .expect("whole")
                        .0;
                    let sess = self.sessions.get(&s).expect("a session fd");
                    let want = self
                        .expected
                        .get(&sess.name)
                        .and_then(|t| t.get(&a.token.get()))
                        .unwrap_or_else(|| {
                            panic!("retrieved token {} never preserved", a.token.get())
                        })
                        .clone();
                    match &want {
                        Preserved::Test(v) => {
                            assert_eq!(self.k.file(a.fd).expect("fd").test_value(), Some(*v));
                        }
                        Preserved::Memfd(d) => {
                            let mut got = vec![0u8; d.len() + 1];
                            assert_eq!(self.k.pread(a.fd, 0, &mut got), Ok(d.len()));
                            assert_eq!(&got[..d.len()], &d[..], "memfd contents");
                        }
                    }
                    // A retrieved file can be preserved again, into a new session.
                    self.files.insert(a.fd, want);
                    self.fds.push(a.fd);
                }
            }
            8 => {
                // FINISH or GET_NAME
                let s = self.pick_session(inp);
                if inp.u8() & 1 == 0 {
                    let a = liveupdate_session_finish {
                        size: 8,
                        reserved: 0,
                    };
                    let mut arg = Self::arg(inp, a.as_bytes().to_vec());
                    let _ = self.ioctl(s, LIVEUPDATE_SESSION_FINISH, &mut arg);
                } else {
                    let mut a = liveupdate_session_get_name::new_zeroed();
                    a.size = size_of_val(&a) as u32;
                    let mut arg = Self::arg(inp, a.as_bytes().to_vec());
                    if self.ioctl(s, LIVEUPDATE_SESSION_GET_NAME, &mut arg).is_ok() {
                        let a = liveupdate_session_get_name::read_from_prefix(&arg)
                            .expect("whole")
                            .0;
                        let name = &self.sessions.get(&s).expect("a session fd").name;
                        assert_eq!(&a.name[..name.len()], &name[..]);
                        assert_eq!(a.name.get(name.len()), Some(&0));
                    }
                }
            }
            9 => {
                let fd = self.pick_fd(inp);
                if self.k.close(fd).is_ok() {
                    self.files.remove(&fd);
                    if let Some(s) = self.sessions.remove(&fd)
                        && !s.incoming
                    {
                        // Closing an outgoing session unpreserves its files.
                        self.out.remove(&s.name);
                    }
                }
            }
            _ => self.kexec(),
        }
    }

    /// Kexec: exactly the outgoing sessions (with their files) cross.
    fn kexec(&mut self) {
        let h = self.k.kexec().expect("kexec without injected failures");
        self.k = Self::boot(self.opts.clone(), Some(h));
        self.expected = std::mem::take(&mut self.out);
        self.retrieved.clear();
        self.fds.clear();
        self.files.clear();
        self.sessions.clear();
    }
}

/// The uAPI byte API, driven statefully: device opens, session create and
/// retrieve, preserve, retrieve, finish, get-name and close with
/// well-formed or mangled argument structs (size fields, lengths, trailing
/// bytes), test files, memfds, `/dev/null` and fds never handed out, and
/// in-process kexecs (heap-backed arena). Checked against a model: only
/// documented errnos; a retrieved session was handed over and is retrieved
/// once; a retrieved file was preserved under that token and has its value
/// or contents; names and tokens unique; and at the end, after closing
/// every fd, nothing is left preserved, and after one more kexec nothing
/// incoming.
pub fn uapi(data: &[u8]) {
    let opts = luo_core::BootOptions {
        arena_pages: 1 << 12,
        ..luo_core::BootOptions::default()
    };
    let mut w = World {
        k: World::boot(opts.clone(), None),
        opts,
        fds: Vec::new(),
        files: Default::default(),
        sessions: Default::default(),
        out: Default::default(),
        expected: Default::default(),
        retrieved: Default::default(),
    };
    let mut inp = Input(data);
    let mut steps = 0;
    while let Some(op) = inp.byte() {
        steps += 1;
        if steps > 256 {
            break;
        }
        w.step(&mut inp, op);
    }
    for fd in std::mem::take(&mut w.fds) {
        let _ = w.k.close(fd);
    }
    let st = w.k.stats();
    assert_eq!(
        st.preserved_beyond_root(),
        0,
        "preserved after closing everything: {st:?}"
    );
    w.out.clear();
    w.kexec();
    let st = w.k.stats();
    assert_eq!(
        (st.kho.incoming_pages, st.preserved_beyond_root()),
        (0, 0),
        "{st:?}"
    );
}
