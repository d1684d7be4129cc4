// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Booting a kernel from a saved handover image (`luo boot IMAGE`).
//!
//! `luo inspect` runs the decoder over an image; this runs the boot path: a simulated machine
//! ([`crate::machine`]: the core and the memfd handler of the chosen kernel; for kernel next
//! also the vm scenario's HugeTLB, kvm, guest_memfd, iommufd and vfio-pci handlers) boots from
//! the memory the image describes ([`Handover::from_image`]), then, as userspace would, opens
//! `/dev/liveupdate`, retrieves every session the image holds and every file in it, and
//! finishes each session. A corrupt image is a typed boot error, never a panic; a file the
//! kernel cannot retrieve is reported with its errno, and so is a FINISH the handlers refuse
//! until userspace has done more than retrieve (an iommufd's HWPTs restored: `EBUSY`). The image keeps no memfd data, so the
//! files' contents read as zeros and are not checked here (`luo simulate` checks them).

use std::fmt::Write as _;

use luo_abi::Errno;
use luo_core::image::Image;
use luo_core::{Handover, ImageError, Kernel, KernelVersion};
use luo_handlers::hugetlb::Form;
use serde::Serialize;

/// Why an image could not be booted and opened.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel refused the handover (upstream: a panic at boot), or the image is unreadable.
    #[error("kernel {kernel} refused to boot from it: {error}")]
    Boot {
        /// The kernel.
        kernel: &'static str,
        /// Why.
        error: ImageError,
    },
    /// Registering the handlers after the boot failed.
    #[error("kernel {kernel} booted, but registering its handlers failed: {why}")]
    Register {
        /// The kernel.
        kernel: &'static str,
        /// Why.
        why: String,
    },
    /// The first open of `/dev/liveupdate`, which deserializes every session, failed: a file
    /// whose handler the kernel lacks, or a record the handler refuses.
    #[error(
        "kernel {kernel} booted, but the first open of /dev/liveupdate, which deserializes \
         every session, failed: {errno}; `luo inspect` lists the files and their handlers"
    )]
    Open {
        /// The kernel.
        kernel: &'static str,
        /// The errno of the open.
        errno: Errno,
    },
}

/// What booting an image did.
#[derive(Clone, Debug, Serialize)]
pub struct BootReport {
    /// The kernel that booted.
    pub kernel: &'static str,
    /// The LUO format of the image (as `luo inspect` names it).
    pub format: Option<String>,
    /// Every session of the image, in handover order.
    pub sessions: Vec<SessionBoot>,
}

/// One session after the boot.
#[derive(Clone, Debug, Serialize)]
pub struct SessionBoot {
    /// Name (lossy UTF-8).
    pub name: String,
    /// RETRIEVE_SESSION: `None` if it succeeded, else the errno.
    pub retrieve: Option<String>,
    /// Each file: token and, if RETRIEVE_FD failed, the errno.
    pub files: Vec<FileBoot>,
    /// FINISH: `None` if it succeeded, else the errno.
    pub finish: Option<String>,
}

/// One file after the boot.
#[derive(Clone, Debug, Serialize)]
pub struct FileBoot {
    /// Userspace token.
    pub token: u64,
    /// Handler compatible.
    pub compatible: String,
    /// `None` if RETRIEVE_FD succeeded, else the errno.
    pub error: Option<String>,
}

impl BootReport {
    /// Whether every session and file was retrieved and every session finished.
    pub fn all_retrieved(&self) -> bool {
        self.sessions.iter().all(|s| {
            s.retrieve.is_none() && s.finish.is_none() && s.files.iter().all(|f| f.error.is_none())
        })
    }

    /// Human-readable text.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "kernel {} booted from the image ({}): {} session(s)",
            self.kernel,
            self.format.as_deref().unwrap_or("no LUO state"),
            self.sessions.len()
        );
        for sess in &self.sessions {
            match &sess.retrieve {
                Some(e) => {
                    let _ = writeln!(s, "  session {:?}: retrieve failed: {e}", sess.name);
                    continue;
                }
                None => {
                    let ok = sess.files.iter().filter(|f| f.error.is_none()).count();
                    let _ = writeln!(
                        s,
                        "  session {:?}: {ok} of {} file(s) retrieved, finish {}",
                        sess.name,
                        sess.files.len(),
                        sess.finish.as_deref().unwrap_or("ok")
                    );
                }
            }
            for f in sess.files.iter().filter(|f| f.error.is_some()) {
                let _ = writeln!(
                    s,
                    "    token {} ({}): {}",
                    f.token,
                    f.compatible,
                    f.error.as_deref().unwrap_or_default()
                );
            }
        }
        s
    }
}

fn errno(r: Result<(), Errno>) -> Option<String> {
    r.err().map(|e| e.to_string())
}

/// Boots kernel `version` of the simulated machine from `img`, retrieves every session and
/// file the image holds and finishes every session.
pub fn boot_image(img: &Image, version: KernelVersion) -> Result<BootReport, BootError> {
    let kernel = version.name();
    let refused = |error| BootError::Boot { kernel, error };
    let handover = Handover::from_image(img).map_err(refused)?;
    let k =
        Kernel::boot(&crate::machine::boot_options(version), Some(handover)).map_err(refused)?;
    // The kernel read the image at boot; the decoder lists what it holds, by the same code.
    let listing = crate::inspect::inspect(img).map_err(refused)?;
    // Kernel next also runs the vm scenario's handlers, with HugeTLB in the form the image
    // was written with; they must be registered before the first open deserializes.
    let _vm = if version == KernelVersion::Next {
        let form = if listing
            .flbs
            .iter()
            .flatten()
            .any(|f| f.name == "hugetlb-v1")
        {
            Form::Flb
        } else {
            Form::Subsystem
        };
        Some(
            crate::simulate::vm::register(&k, form).map_err(|e| BootError::Register {
                kernel,
                why: e.to_string(),
            })?,
        )
    } else {
        None
    };
    let dev = k
        .open_dev()
        .map_err(|errno| BootError::Open { kernel, errno })?;
    let mut sessions = Vec::new();
    for s in &listing.sessions {
        let mut boot = SessionBoot {
            name: s.name.clone(),
            retrieve: None,
            files: Vec::new(),
            finish: None,
        };
        match k.retrieve_session(dev, &s.name) {
            Err(e) => boot.retrieve = Some(e.to_string()),
            Ok(sfd) => {
                // The retrieved files stay open until FINISH, as a user of them would keep
                // them (a handler may refuse to finish a file closed before it).
                let mut open = Vec::new();
                for f in &s.files {
                    let r = k.retrieve_fd(sfd, f.token);
                    if let Ok(fd) = r {
                        open.push(fd);
                    }
                    boot.files.push(FileBoot {
                        token: f.token,
                        compatible: f.compatible.clone(),
                        error: errno(r.map(drop)),
                    });
                }
                boot.finish = errno(k.finish_session(sfd));
                for fd in open.into_iter().chain([sfd]) {
                    let _ = k.close(fd);
                }
            }
        }
        sessions.push(boot);
    }
    Ok(BootReport {
        kernel: version.name(),
        format: listing.format,
        sessions,
    })
}
