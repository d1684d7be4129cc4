// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Fault injection at KHO's allocation sites.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use luo_abi::Errno;

/// Fault injection for KHO allocations: every call that allocates KHO memory or
/// tracking state (`alloc_folio`, `preserve_folio`, `preserve_pages`, `preserve_vmalloc`,
/// `alloc_preserve`, `add_subtree`) is an allocation site, and the n-th one on a thread can be
/// made to fail, as upstream's xarray, radix-tree and FDT allocations can. The model's handover
/// blob written at kexec is not a site: upstream builds its radix tree as pages are preserved
/// and has no allocation left at reboot (newest; 6.19's `kho_finalize` is not modelled). The plan is per thread (an in-process kernel runs on its caller's thread,
/// and it then spans both kernels of a kexec); when no thread has one armed, a site costs one
/// relaxed atomic load.
struct AllocFaults {
    /// The sites reached so far, in order.
    calls: Vec<&'static str>,
    /// Index (from 0) of the call to fail.
    fail_at: Option<usize>,
    errno: Errno,
}

/// Threads with an armed [`AllocFaults`] plan.
static ALLOC_FAULTS_ARMED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static ALLOC_FAULTS: RefCell<Option<AllocFaults>> = const { RefCell::new(None) };
}

/// Arms KHO allocation fault injection on this thread: from now on every allocation site is
/// recorded, and the one at index `fail_at` (counting from 0) fails with `errno`. `None` only
/// counts. Re-arming resets the count.
pub fn inject_alloc_faults(fail_at: Option<usize>, errno: Errno) {
    ALLOC_FAULTS.with(|f| {
        let mut f = f.borrow_mut();
        if f.is_none() {
            ALLOC_FAULTS_ARMED.fetch_add(1, Ordering::Relaxed);
        }
        *f = Some(AllocFaults {
            calls: Vec::new(),
            fail_at,
            errno,
        });
    });
}

/// Disarms this thread's plan; returns the allocation sites reached while it was armed.
pub fn take_alloc_faults() -> Vec<&'static str> {
    ALLOC_FAULTS.with(|f| {
        let taken = f.borrow_mut().take();
        if taken.is_some() {
            ALLOC_FAULTS_ARMED.fetch_sub(1, Ordering::Relaxed);
        }
        taken.map(|t| t.calls).unwrap_or_default()
    })
}

/// An allocation site: fails when this thread's plan says so.
#[inline]
pub(super) fn alloc_site(site: &'static str) -> Result<(), Errno> {
    if ALLOC_FAULTS_ARMED.load(Ordering::Relaxed) == 0 {
        return Ok(());
    }
    ALLOC_FAULTS.with(|f| match f.borrow_mut().as_mut() {
        Some(plan) => {
            let n = plan.calls.len();
            plan.calls.push(site);
            if plan.fail_at == Some(n) {
                Err(plan.errno)
            } else {
                Ok(())
            }
        }
        None => Ok(()),
    })
}
