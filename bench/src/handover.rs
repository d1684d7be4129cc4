// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Rows over the real core (`luo-core`) and memfd handler (`luo-handlers`): `memfd_preserve`,
//! `memfd_retrieve`, `migrate_v1`, `sessions` and `blackout`.
//!
//! Every workload goes through the uAPI a program uses (`PRESERVE_FD`, `reboot`, `RETRIEVE_FD`)
//! on a [`Kernel`] of the model: the folio records really are written into and read back from
//! the KHO model's preserved memory. The memfds are real host memfds, `ftruncate`d and sparse:
//! their folios have synthetic physical addresses, so a 16 GiB memfd costs no host memory
//! unless its pages are written (`blackout` writes some and checks them after the kexec).

use std::hint::black_box;
use std::time::{Duration, Instant};

use luo_abi::Errno;
use luo_abi::file::{File, FileKind};
use luo_core::{BootOptions, Kernel, KernelVersion};
use luo_generated::luo::luo_file_ser;
use luo_generated::luo::v5::luo_session_ser;
use luo_handlers::hugetlb::{Form, HugeMemfd, Hugetlb};

/// Folios of 1 GiB of 4 KiB pages.
pub const FOLIOS_1G: u64 = 262_144;

/// Bytes of one `memfd_luo_folio_ser` record.
pub const FOLIO_RECORD: u64 = 16;

const PAGE: u64 = 4096;

/// Arena pages for a kernel carrying `folios` folios plus `files` test files: the folio array
/// (16 bytes each) and chunk lists, a page per test file, and room for LUO's own metadata.
fn arena_pages(folios: u64, files: u64) -> u64 {
    (folios * FOLIO_RECORD / PAGE) * 2 + files * 2 + (1 << 14)
}

/// Boots a fresh kernel playing `version` with the memfd handler and the test handler.
pub fn boot(version: KernelVersion, folios: u64, files: u64) -> Result<Kernel, String> {
    let opts = boot_opts(version, folios, files);
    let k = Kernel::boot(&opts, None).map_err(|e| e.to_string())?;
    luo_testing::register(&k, false).map_err(err("register test handler"))?;
    Ok(k)
}

fn boot_opts(version: KernelVersion, folios: u64, files: u64) -> BootOptions {
    BootOptions {
        arena_pages: arena_pages(folios, files),
        version,
        initcalls: vec![luo_handlers::memfd::initcall::<Kernel>],
        ..BootOptions::default()
    }
}

fn err(what: &'static str) -> impl Fn(Errno) -> String {
    move |e| format!("{what}: {e:?}")
}

/// Kexecs `k` in process into a kernel playing `version` (the test handler registered again,
/// as a module would be).
pub fn kexec(
    k: &Kernel,
    version: KernelVersion,
    folios: u64,
    files: u64,
) -> Result<Kernel, String> {
    let h = k.kexec().map_err(err("kexec"))?;
    let k2 =
        Kernel::boot(&boot_opts(version, folios, files), Some(h)).map_err(|e| e.to_string())?;
    luo_testing::register(&k2, false).map_err(err("register test handler"))?;
    Ok(k2)
}

/// A kernel with `/dev/liveupdate` open and a memfd of `folios` 4 KiB pages.
pub struct MemfdFixture {
    /// The kernel.
    pub k: Kernel,
    /// `/dev/liveupdate`.
    pub dev: i32,
    /// The memfd.
    pub fd: i32,
    /// Its folio count.
    pub folios: u64,
    sessions: u64,
}

impl MemfdFixture {
    /// Boots `version` and creates the memfd (sparse: `ftruncate` only).
    pub fn new(version: KernelVersion, folios: u64) -> Result<MemfdFixture, String> {
        let k = boot(version, folios, 0)?;
        let dev = k.open_dev().map_err(err("open /dev/liveupdate"))?;
        let fd = k.memfd_create("guest-ram").map_err(err("memfd_create"))?;
        k.ftruncate(fd, folios * PAGE).map_err(err("ftruncate"))?;
        Ok(MemfdFixture {
            k,
            dev,
            fd,
            folios,
            sessions: 0,
        })
    }

    /// A new session holding the memfd (token 1).
    pub fn preserve(&mut self) -> Result<i32, String> {
        self.sessions += 1;
        let s = self
            .k
            .create_session(self.dev, &format!("s{}", self.sessions))
            .map_err(err("create_session"))?;
        self.k
            .preserve_fd(s, self.fd, 1)
            .map_err(err("preserve_fd"))?;
        Ok(s)
    }

    /// Times one `PRESERVE_FD` of the memfd, and separately the host-side pinning (listing
    /// and pinning the file's folios through `ShmemFile::pin_folios`, what the issue excludes).
    /// The session is closed again (unpreserve) after each, untimed.
    pub fn time_preserve(&mut self) -> Result<(Duration, Duration), String> {
        self.sessions += 1;
        let s = self
            .k
            .create_session(self.dev, &format!("s{}", self.sessions))
            .map_err(err("create_session"))?;
        let t = Instant::now();
        self.k
            .preserve_fd(s, self.fd, 1)
            .map_err(err("preserve_fd"))?;
        let preserve = t.elapsed();
        self.k.close(s).map_err(err("close session"))?;
        let file = self.k.file(self.fd).map_err(err("file"))?;
        let shm = file.as_shmem().ok_or("memfd is not shmem")?;
        let t = Instant::now();
        let folios = shm.pin_folios().map_err(err("pin_folios"))?;
        shm.unpin_folios(black_box(&folios));
        let pin = t.elapsed();
        if folios.len() as u64 != self.folios {
            return Err(format!(
                "{} folios pinned, {} expected",
                folios.len(),
                self.folios
            ));
        }
        drop(folios);
        Ok((preserve, pin))
    }
}

/// Preserves a memfd of `folios` pages in a kernel playing `from`, kexecs into `to`, and times
/// `RETRIEVE_FD` of it there (validating and restoring every folio record). Checks that the
/// retrieved file has the size preserved.
pub fn time_retrieve(
    from: KernelVersion,
    to: KernelVersion,
    folios: u64,
) -> Result<Duration, String> {
    let mut f = MemfdFixture::new(from, folios)?;
    f.preserve()?;
    let k2 = kexec(&f.k, to, folios, 0)?;
    drop(f);
    let dev = k2.open_dev().map_err(err("open /dev/liveupdate"))?;
    let s = k2
        .retrieve_session(dev, "s1")
        .map_err(err("retrieve_session"))?;
    let t = Instant::now();
    let fd = k2.retrieve_fd(s, 1).map_err(err("retrieve_fd"))?;
    let d = t.elapsed();
    let file = k2.file(fd).map_err(err("file"))?;
    let size = file.as_shmem().ok_or("not shmem")?.size();
    if size != folios * PAGE {
        return Err(format!("retrieved size {size}, expected {}", folios * PAGE));
    }
    Ok(d)
}

/// A memcpy of `bytes` bytes between two pre-faulted buffers (the baseline of the memfd rows).
pub struct Memcpy {
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl Memcpy {
    /// Buffers of `bytes` bytes, both written once so they are faulted in.
    pub fn new(bytes: usize) -> Memcpy {
        Memcpy {
            src: (0..bytes).map(|i| i as u8).collect(),
            dst: vec![1u8; bytes],
        }
    }

    /// One copy.
    pub fn run(&mut self) {
        self.dst.copy_from_slice(black_box(&self.src));
        black_box(&mut self.dst);
    }

    /// Times one copy.
    pub fn time(&mut self) -> Duration {
        let t = Instant::now();
        self.run();
        t.elapsed()
    }
}

/// Bytes of the LUO entries of `sessions` sessions and `files` files (`luo_session_ser` and
/// `luo_file_ser`).
pub fn entry_bytes(sessions: u64, files: u64) -> u64 {
    sessions * size_of::<luo_session_ser>() as u64 + files * size_of::<luo_file_ser>() as u64
}

/// A kernel with `sessions` sessions holding `files` test files between them.
pub struct SessionsFixture {
    /// The kernel.
    pub k: Kernel,
    /// The session fds.
    pub fds: Vec<i32>,
    /// Sessions.
    pub sessions: u64,
    /// Files.
    pub files: u64,
}

impl SessionsFixture {
    /// Creates the sessions and preserves the files (round robin over the sessions).
    pub fn new(
        version: KernelVersion,
        sessions: u64,
        files: u64,
        folios: u64,
    ) -> Result<Self, String> {
        SessionsFixture::with_kernel(boot(version, folios, files)?, sessions, files)
    }

    /// [`SessionsFixture::new`] in the kernel `k` (booted and with its handlers registered).
    pub fn with_kernel(k: Kernel, sessions: u64, files: u64) -> Result<Self, String> {
        let dev = k.open_dev().map_err(err("open /dev/liveupdate"))?;
        let mut fds = Vec::new();
        for i in 0..sessions {
            fds.push(
                k.create_session(dev, &session_name(i))
                    .map_err(err("create_session"))?,
            );
        }
        for j in 0..files {
            let f = k.test_file(j).map_err(err("test_file"))?;
            let s = fds[(j % sessions) as usize];
            k.preserve_fd(s, f, 100 + j).map_err(err("preserve_fd"))?;
            k.close(f).map_err(err("close"))?;
        }
        // The test handler logs every callback; keep the log out of the measurement.
        luo_testing::take_log();
        Ok(SessionsFixture {
            k,
            fds,
            sessions,
            files,
        })
    }
}

/// The name of session `i`.
pub fn session_name(i: u64) -> String {
    format!("session-{i:05}")
}

/// What one sessions round measured.
#[derive(Clone, Copy, Debug)]
pub struct SessionsTimes {
    /// `reboot()`: freeze every file and write the sessions (LUO's serialize + KHO's kexec).
    pub serialize: Duration,
    /// The next kernel's boot (reads the LUO root and session chain) and the first open of
    /// `/dev/liveupdate` (deserializes every session and its files).
    pub deserialize: Duration,
}

/// Serializes the fixture's kernel (kexec) and deserializes it in the next kernel; checks that
/// every session came back with its files.
pub fn time_sessions(f: SessionsFixture) -> Result<SessionsTimes, String> {
    let SessionsFixture {
        k, sessions, files, ..
    } = f;
    let version = k.version();
    let t = Instant::now();
    let h = k.kexec().map_err(err("kexec"))?;
    let serialize = t.elapsed();
    drop(k);
    let opts = boot_opts(version, 0, files);
    let t = Instant::now();
    let k2 = Kernel::boot(&opts, Some(h)).map_err(|e| e.to_string())?;
    luo_testing::register(&k2, false).map_err(err("register test handler"))?;
    let dev = k2.open_dev().map_err(err("open /dev/liveupdate"))?;
    let deserialize = t.elapsed();
    let inc = k2.luo().incoming();
    let n_files: usize = inc.iter().map(|s| s.tokens().len()).sum();
    if inc.len() as u64 != sessions || n_files as u64 != files {
        return Err(format!(
            "{} sessions / {n_files} files came back, {sessions} / {files} expected",
            inc.len()
        ));
    }
    black_box(dev);
    Ok(SessionsTimes {
        serialize,
        deserialize,
    })
}

/// What one [`time_session_scaling`] round measured.
#[derive(Clone, Copy, Debug)]
pub struct ScalingTimes {
    /// The next kernel's boot and first `/dev/liveupdate` open (deserialize every session).
    pub deserialize: Duration,
    /// `RETRIEVE_SESSION` of every session.
    pub retrieve: Duration,
    /// `FINISH` and close of every session.
    pub finish: Duration,
}

/// `sessions` empty sessions (as `luo simulate --sessions N --files 0`) across a kexec: the
/// next kernel deserializes, retrieves and finishes every one of them.
pub fn time_session_scaling(sessions: u64) -> Result<ScalingTimes, String> {
    let f = SessionsFixture::new(KernelVersion::V7_3, sessions, 0, 0)?;
    let version = f.k.version();
    let h = f.k.kexec().map_err(err("kexec"))?;
    drop(f);
    let t = Instant::now();
    let k2 = Kernel::boot(&boot_opts(version, 0, 0), Some(h)).map_err(|e| e.to_string())?;
    luo_testing::register(&k2, false).map_err(err("register test handler"))?;
    let dev = k2.open_dev().map_err(err("open /dev/liveupdate"))?;
    let deserialize = t.elapsed();
    let t = Instant::now();
    let fds = (0..sessions)
        .map(|i| {
            k2.retrieve_session(dev, &session_name(i))
                .map_err(err("retrieve_session"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let retrieve = t.elapsed();
    let t = Instant::now();
    for s in fds {
        k2.finish_session(s).map_err(err("finish_session"))?;
        k2.close(s).map_err(err("close session"))?;
    }
    let finish = t.elapsed();
    if !k2.luo().incoming().is_empty() {
        return Err("sessions left after finish and close".into());
    }
    Ok(ScalingTimes {
        deserialize,
        retrieve,
        finish,
    })
}

/// The result of one blackout run (printed as JSON by the report's child process).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Blackout {
    /// Its folios.
    pub folios: u64,
    /// Sessions (the memfd is in the first).
    pub sessions: u64,
    /// Test files spread over the sessions.
    pub files: u64,
    /// freeze + serialize + KHO handover (`reboot()`), ms.
    pub freeze_kexec_ms: f64,
    /// Boot of the next kernel (KHO and LUO early boot), ms.
    pub boot_ms: f64,
    /// Open `/dev/liveupdate` (deserialize), retrieve every session and every file, ms.
    pub retrieve_ms: f64,
    /// The whole blackout (the three phases above), ms.
    pub total_ms: f64,
    /// FINISH of every session after the workload is back (outside the blackout), ms.
    pub finish_ms: f64,
    /// Bytes of file data the core copied into a retrieved memfd (its counter).
    pub file_bytes_copied: u64,
    /// Folios the memfd handler copied or zeroed (its counters).
    pub handler_folios_copied: u64,
    /// Whether the retrieved memfd is the very same host file (same device and inode).
    pub same_host_file: bool,
    /// Pages written before the kexec and checked after it.
    pub touched_pages: u64,
    /// Bytes of handed-over metadata: folio records plus session and file entries.
    pub metadata_bytes: u64,
    /// VmHWM (peak RSS) of the process, bytes.
    pub peak_rss: u64,
    /// VmRSS before the kernel booted, bytes.
    pub start_rss: u64,
    /// VmHWM just before `reboot()` (the old kernel with everything preserved), bytes.
    pub peak_rss_before_kexec: u64,
    /// KHO arena memory in use just before `reboot()` (everything handed over besides the
    /// memfd's own pages: folio array, LUO blocks, one page per test file), bytes.
    pub arena_bytes: u64,
}

/// A `/proc/self/status` field in bytes (`VmHWM`, `VmRSS`), 0 if unavailable.
pub fn proc_status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn host_ino(k: &Kernel, fd: i32) -> Result<(u64, u64), String> {
    let file = k.file(fd).map_err(err("file"))?;
    let m = file.memfd().ok_or("not a memfd")?;
    m.with_host_fd(|h| {
        rustix::fs::fstat(h)
            .map(|st| (st.st_dev, st.st_ino))
            .map_err(|e| format!("fstat: {e}"))
    })
    .map_err(err("host fd"))?
}

/// What backs the guest memory of a [`blackout`] run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guest {
    /// A shmem memfd of 4 KiB folios (`memfd-v2`).
    Memfd,
    /// A HugeTLB memfd of 2 MiB folios (`huge-memfd-v1`, the HugeTLB pools handed over as
    /// upstream's FLB).
    Hugetlb,
}

impl Guest {
    /// Order of its folios.
    pub const fn order(self) -> u32 {
        match self {
            Guest::Memfd => 0,
            Guest::Hugetlb => HUGE_ORDER,
        }
    }

    /// The name the report's child takes.
    pub const fn name(self) -> &'static str {
        match self {
            Guest::Memfd => "memfd",
            Guest::Hugetlb => "hugetlb",
        }
    }

    /// Parses [`Guest::name`].
    pub fn parse(s: &str) -> Option<Guest> {
        [Guest::Memfd, Guest::Hugetlb]
            .into_iter()
            .find(|g| g.name() == s)
    }
}

/// 2 MiB huge pages, x86's.
const HUGE_ORDER: u32 = 9;

/// A kernel for a blackout run: the arena holds the folio records and the test files' pages,
/// and for a HugeTLB guest its huge pages (the model's HugeTLB pages are arena folios; the
/// heap-backed arena costs host memory only for pages written).
fn blackout_kernel(
    guest: Guest,
    folios: u64,
    files: u64,
    h: Option<luo_core::Handover>,
) -> Result<(Kernel, Option<Hugetlb>), String> {
    let version = KernelVersion::default();
    let mut opts = boot_opts(version, folios, files);
    if guest == Guest::Hugetlb {
        // The huge pages themselves, and room to align them.
        opts.arena_pages += (folios + 1) << HUGE_ORDER;
    }
    let k = Kernel::boot(&opts, h).map_err(|e| e.to_string())?;
    luo_testing::register(&k, false).map_err(err("register test handler"))?;
    let ht = match guest {
        Guest::Memfd => None,
        Guest::Hugetlb => {
            Some(luo_handlers::vm::register(&k, Form::Flb).map_err(err("register hugetlb"))?)
        }
    };
    Ok((k, ht))
}

/// The guest memory of a blackout run in the old kernel: its fd and what identifies its
/// memory (the host memfd's device and inode, or the huge folios' addresses).
fn guest_ram(
    guest: Guest,
    k: &Kernel,
    ht: Option<&Hugetlb>,
    folios: u64,
    touched: &[u64],
) -> Result<(i32, Vec<u64>), String> {
    match guest {
        Guest::Memfd => {
            let fd = k.memfd_create("guest-ram").map_err(err("memfd_create"))?;
            k.ftruncate(fd, folios * PAGE).map_err(err("ftruncate"))?;
            for &page in touched {
                k.pwrite(fd, page * PAGE, &page_pattern(page))
                    .map_err(err("pwrite"))?;
            }
            let (dev, ino) = host_ino(k, fd)?;
            Ok((fd, vec![dev, ino]))
        }
        Guest::Hugetlb => {
            let ht = ht.ok_or("no hugetlb")?;
            ht.configure(HUGE_ORDER, folios)
                .map_err(err("hugetlb pool"))?;
            let m = HugeMemfd::new(ht, HUGE_ORDER, folios).map_err(err("huge memfd"))?;
            // Guest memory is all there: every huge page allocated.
            let mut ids = Vec::with_capacity(folios as usize);
            for i in 0..folios {
                ids.push(m.pages().populate(i).map_err(err("populate"))?.as_u64());
            }
            for &page in touched {
                m.pages()
                    .write(page * PAGE, &page_pattern(page))
                    .map_err(err("write"))?;
            }
            let fd = k
                .open_synthetic(FileKind::HugeMemfd, "guest-ram", Box::new(m))
                .map_err(err("open huge memfd"))?;
            Ok((fd, ids))
        }
    }
}

/// Reads page `page` of the retrieved guest memory.
fn read_guest(guest: Guest, k: &Kernel, fd: i32, page: u64, buf: &mut [u8]) -> Result<(), String> {
    match guest {
        Guest::Memfd => k
            .pread(fd, page * PAGE, buf)
            .map(drop)
            .map_err(err("pread")),
        Guest::Hugetlb => k
            .file(fd)
            .map_err(err("file"))?
            .synthetic::<HugeMemfd>()
            .ok_or("not a huge memfd")?
            .pages()
            .read(page * PAGE, buf)
            .map_err(err("read")),
    }
}

/// What identifies the retrieved guest memory (see [`guest_ram`]).
fn guest_ids(guest: Guest, k: &Kernel, fd: i32) -> Result<Vec<u64>, String> {
    match guest {
        Guest::Memfd => host_ino(k, fd).map(|(d, i)| vec![d, i]),
        Guest::Hugetlb => Ok(k
            .file(fd)
            .map_err(err("file"))?
            .synthetic::<HugeMemfd>()
            .ok_or("not a huge memfd")?
            .pages()
            .folios()
            .iter()
            .map(|(_, f)| f.phys.as_u64())
            .collect()),
    }
}

/// The blackout of a machine whose guest memory is `folios` folios of `guest`, with
/// `sessions` sessions holding `files` test files: freeze -> in-process kexec -> retrieve
/// every session and file. `touched` 4 KiB pages spread over the guest memory are written
/// before and checked after.
pub fn blackout(
    guest: Guest,
    folios: u64,
    sessions: u64,
    files: u64,
    touched: u64,
) -> Result<Blackout, String> {
    let start_rss = proc_status_bytes("VmRSS:");
    let (k, ht) = blackout_kernel(guest, folios, files, None)?;
    let fx = SessionsFixture::with_kernel(k, sessions, files)?;
    let k = &fx.k;
    let pages = folios << guest.order();
    let stride = (pages / touched.max(1)).max(1);
    let touched_pages: Vec<u64> = (0..touched).map(|i| i * stride).collect();
    let (fd, before) = guest_ram(guest, k, ht.as_ref(), folios, &touched_pages)?;
    k.preserve_fd(fx.fds[0], fd, 1)
        .map_err(err("preserve_fd guest memory"))?;
    let copied0 = luo_core::file::file_data_copied();
    let h0 = luo_handlers::memfd::stats();

    let peak_rss_before_kexec = proc_status_bytes("VmHWM:");
    // What is handed over besides the guest memory (a HugeTLB guest's pages are arena
    // folios).
    let guest_in_arena = if guest == Guest::Hugetlb { pages } else { 0 };
    let arena_bytes = (k.stats().kho.arena_pages_in_use - guest_in_arena) * PAGE;
    let t = Instant::now();
    let h = k.kexec().map_err(err("kexec"))?;
    let freeze_kexec = t.elapsed();
    // The old kernel's memory vanishes at a real kexec; here its structures are freed, outside
    // the timed phases, so they do not count in the next kernel's time or peak memory.
    drop(fx);
    drop(ht);
    let t1 = Instant::now();
    let (k2, ht2) = blackout_kernel(guest, folios, files, Some(h))?;
    let boot = t1.elapsed();
    let t2 = Instant::now();
    let dev = k2.open_dev().map_err(err("open /dev/liveupdate"))?;
    let mut sfds = Vec::with_capacity(sessions as usize);
    let mut ram = None;
    for i in 0..sessions {
        let s = k2
            .retrieve_session(dev, &session_name(i))
            .map_err(err("retrieve_session"))?;
        // The files of session `i` (round robin): `i`, `i + sessions`, ... (not a filter
        // over every file per session, which the timed phase would pay quadratically).
        for tok in (i..files).step_by(sessions as usize).map(|j| 100 + j) {
            black_box(k2.retrieve_fd(s, tok).map_err(err("retrieve_fd"))?);
        }
        if i == 0 {
            ram = Some(
                k2.retrieve_fd(s, 1)
                    .map_err(err("retrieve_fd guest memory"))?,
            );
        }
        sfds.push(s);
    }
    let retrieve = t2.elapsed();
    let total = freeze_kexec + boot + retrieve;
    let ram = ram.ok_or("no guest memory retrieved")?;
    let file_bytes_copied = luo_core::file::file_data_copied() - copied0;
    let h1 = luo_handlers::memfd::stats();
    let same_host_file = guest_ids(guest, &k2, ram)? == before;
    for &page in &touched_pages {
        let mut buf = vec![0u8; PAGE as usize];
        read_guest(guest, &k2, ram, page, &mut buf)?;
        if buf != page_pattern(page) {
            return Err(format!("page {page} lost its data across the kexec"));
        }
    }
    let t3 = Instant::now();
    for s in sfds {
        k2.finish_session(s).map_err(err("finish_session"))?;
    }
    let finish = t3.elapsed();
    drop(ht2);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Blackout {
        folios,
        sessions,
        files,
        freeze_kexec_ms: ms(freeze_kexec),
        boot_ms: ms(boot),
        retrieve_ms: ms(retrieve),
        total_ms: ms(total),
        finish_ms: ms(finish),
        file_bytes_copied,
        handler_folios_copied: (h1.folios_copied - h0.folios_copied)
            + (h1.folios_zeroed - h0.folios_zeroed),
        same_host_file,
        touched_pages: touched,
        metadata_bytes: folios * FOLIO_RECORD + entry_bytes(sessions, files),
        peak_rss: proc_status_bytes("VmHWM:"),
        start_rss,
        peak_rss_before_kexec,
        arena_bytes,
    })
}

fn page_pattern(page: u64) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (page.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_round_trips() {
        let mut f = MemfdFixture::new(KernelVersion::V7_3, 64).unwrap();
        let (p, pin) = f.time_preserve().unwrap();
        assert!(p > Duration::ZERO && pin > Duration::ZERO);
        time_retrieve(KernelVersion::V7_0, KernelVersion::V7_3, 64).unwrap();
        let s = SessionsFixture::new(KernelVersion::V7_3, 20, 100, 0).unwrap();
        time_sessions(s).unwrap();
        time_session_scaling(30).unwrap();
        for guest in [Guest::Memfd, Guest::Hugetlb] {
            let b = blackout(guest, 8, 10, 50, 8).unwrap();
            assert!(b.same_host_file, "{guest:?}");
            assert_eq!(b.file_bytes_copied, 0);
        }
    }
}
