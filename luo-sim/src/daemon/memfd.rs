// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The host side of preserved memfds: adopting a client's memfd, holes allocated as preserve
//! does, the preserved size restored, mirrors synced and pruned, a retrieved memfd exported.

use std::os::fd::{AsRawFd, OwnedFd};

use luo_abi::Errno;
use luo_abi::file::ShmemFile;

use super::*;

impl Daemon {
    /// The core fd standing for a program's file (PRESERVE_FD): a core memfd mirroring a
    /// shmem file (refreshed now unless preserved), else a temporary `/dev/null` (ENOENT).
    pub(super) fn adopt(&mut self, f: OwnedFd) -> Result<(i32, bool), Errno> {
        let st = rustix::fs::fstat(&f).map_err(host_errno)?;
        let shmem = rustix::fs::fstatfs(&f).is_ok_and(|s| is_tmpfs(&s))
            && rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            && st.st_nlink == 0;
        if !shmem {
            return Ok((self.kernel.open_null()?, true));
        }
        let key = (st.st_dev, st.st_ino);
        if let Some(m) = self.mirrors.get(&key) {
            if m.client.is_some() {
                self.sync(m);
            }
            return Ok((m.core_fd, false));
        }
        let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = link
            .strip_prefix("/memfd:")
            .map(|s| s.strip_suffix(" (deleted)").unwrap_or(s))
            .unwrap_or("shmem")
            .to_owned();
        let pos_fd = rustix::io::fcntl_dupfd_cloexec(&f, 0).map_err(host_errno)?;
        let core_fd = self.kernel.memfd_adopt(f, &name)?;
        let m = Mirror {
            core_fd,
            client: Some(pos_fd),
            session: None,
            preserved_size: None,
            late_seals: 0,
        };
        self.sync(&m);
        self.mirrors.insert(key, m);
        Ok((core_fd, false))
    }

    /// The kernel's memfd preserve pins every folio, which allocates the holes, and zeroes
    /// the folios that are not up to date: after the live update a sparse file reads back as
    /// data everywhere (SEEK_HOLE at its end; 7.2.13, tests/c/conformance/memfd.c). So the
    /// holes are written with zeros here (an fallocate'd page still counts as a hole to
    /// SEEK_HOLE on tmpfs). Best effort: a failure leaves holes, which read as zeros anyway.
    /// Returns the file's size.
    pub(super) fn allocate_holes(&self, core_fd: i32) -> Option<u64> {
        let file = self.kernel.file(core_fd).ok()?;
        let mf = file.memfd()?;
        mf.with_host_fd(|h| {
            use rustix::fs::SeekFrom;
            let size = rustix::fs::fstat(h).ok()?.st_size as u64;
            // `h` shares the program's open file description: its position is put back.
            let saved = rustix::fs::seek(h, SeekFrom::Current(0));
            let zeros = vec![0u8; 1 << 16];
            let mut off = 0;
            while off < size {
                let Ok(hole) = rustix::fs::seek(h, SeekFrom::Hole(off)) else {
                    break;
                };
                if hole >= size {
                    break;
                }
                let end = rustix::fs::seek(h, SeekFrom::Data(hole)).map_or(size, |d| d.min(size));
                let mut at = hole;
                while at < end {
                    let n = ((end - at) as usize).min(zeros.len());
                    match rustix::io::pwrite(h, &zeros[..n], at) {
                        Ok(w) if w > 0 => at += w as u64,
                        _ => break,
                    }
                }
                off = end.max(at);
            }
            if let Ok(p) = saved {
                let _ = rustix::fs::seek(h, SeekFrom::Start(p));
            }
            Some(size)
        })
        .ok()
        .flatten()
    }

    /// Puts a preserved file back to its preserved size if a program changed it behind the
    /// preload's freeze, so the kexec's work (and memory) is bounded by what was preserved.
    pub(super) fn restore_preserved_size(&self, m: &Mirror) {
        let Some(want) = m.preserved_size else { return };
        let Ok(file) = self.kernel.file(m.core_fd) else {
            return;
        };
        let Some(mf) = file.memfd() else { return };
        if !mf.is_frozen() {
            return;
        }
        let _ = mf.with_host_fd(|h| {
            let size = rustix::fs::fstat(h).map_or(want, |st| st.st_size as u64);
            if size != want {
                let _ = rustix::fs::ftruncate(h, want);
                self.log(format_args!(
                    "a preserved memfd was resized behind the freeze ({size} bytes): back to \
                     its preserved {want} bytes"
                ));
            }
        });
    }

    /// Reads the program's file position into the core memfd (the pages, size and seals are
    /// shared: the core adopted the program's memfd).
    pub(super) fn sync(&self, m: &Mirror) {
        let Some(client) = &m.client else { return };
        let Ok(file) = self.kernel.file(m.core_fd) else {
            return;
        };
        let Some(mf) = file.memfd() else { return };
        if let Ok(pos) = rustix::fs::seek(client, rustix::fs::SeekFrom::Current(0)) {
            mf.set_pos(pos);
        }
    }

    /// Lets go of the files nothing can reach through the daemon any more, so its descriptors
    /// and the host memfds return to where they were once the sessions are gone: files that are
    /// not preserved (unpreserved by a session's close, or whose preserve failed) and files
    /// retrieved through the session connection `closed`.
    pub(super) fn prune(&mut self, closed: Option<u64>) {
        let kernel = &self.kernel;
        let frozen = |m: &Mirror| {
            kernel
                .file(m.core_fd)
                .ok()
                .and_then(|f| f.memfd().map(|mf| mf.is_frozen()))
                .unwrap_or(false)
        };
        let mut gone = Vec::new();
        self.mirrors.retain(|_, m| {
            let keep = match m.session {
                Some(s) if Some(s) != closed => true,
                // A retrieved file preserved again outlives the session it came from: it is
                // a preserved file now, frozen until its new session lets it go.
                Some(_) if frozen(m) => {
                    m.session = None;
                    true
                }
                Some(_) => false,
                None => frozen(m),
            };
            if !keep {
                // Thawed: the seals added while frozen are the file's from now on, as on the
                // kernel's inode.
                if m.late_seals != 0
                    && let Some(c) = &m.client
                {
                    let _ = rustix::fs::fcntl_add_seals(
                        c,
                        rustix::fs::SealFlags::from_bits_retain(m.late_seals),
                    );
                }
                gone.push(m.core_fd);
            }
            keep
        });
        for fd in gone {
            let _ = self.kernel.close(fd);
        }
    }

    /// RETRIEVE_FD: the program gets the core memfd's host file itself.
    pub(super) fn export_memfd(&mut self, core_fd: i32) -> Result<OwnedFd, Errno> {
        let file = self.kernel.file(core_fd)?;
        let Some(mf) = file.memfd() else {
            let _ = self.kernel.close(core_fd);
            return Err(Errno::EINVAL);
        };
        mf.settle()?;
        let pos = mf.pos();
        let st = mf
            .with_host_fd(|h| rustix::fs::fstat(h))?
            .map_err(host_errno)?;
        let key = (st.st_dev, st.st_ino);
        // A later RETRIEVE_FD of the same token gives another fd for the same struct file
        // (shared position): a dup of the first one's open file description.
        if let Some(Mirror {
            client: Some(ofd), ..
        }) = self.mirrors.get(&key)
        {
            let again = rustix::io::fcntl_dupfd_cloexec(ofd, 0).map_err(host_errno)?;
            let _ = self.kernel.close(core_fd);
            return Ok(again);
        }
        // The first: a new open file description of the same inode, as the kernel's retrieve
        // opens a new file (O_RDWR | O_LARGEFILE, its own position); a dup of the host fd
        // would share the flags (O_APPEND) and position of the program's preserved file.
        let host = mf
            .with_host_fd(|h| {
                rustix::fs::open(
                    format!("/proc/self/fd/{}", h.as_raw_fd()),
                    rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
            })?
            .map_err(host_errno)?;
        let _ = rustix::fs::seek(&host, rustix::fs::SeekFrom::Start(pos));
        // The kernel's retrieve makes a new file (memfd_alloc_file("") in mm/memfd_luo.c): mode
        // 0777 and an empty name, where this host file keeps the program's (an MFD_NOEXEC_SEAL
        // memfd is 0666 and cannot be chmod'ed back). The preload asks (OP_RETRIEVED) so as to
        // answer fstat and readlink of /proc/self/fd/N as for the kernel's file.
        self.retrieved.insert(key);
        let mine = rustix::io::fcntl_dupfd_cloexec(&host, 0).map_err(host_errno)?;
        if let Some(old) = self.mirrors.insert(
            key,
            Mirror {
                core_fd,
                client: Some(mine),
                session: Some(self.serving),
                preserved_size: None,
                late_seals: 0,
            },
        ) && old.core_fd != core_fd
        {
            let _ = self.kernel.close(old.core_fd);
        }
        Ok(host)
    }
}
