//! A KHO service over one `Vec<u8>`: enough for the runtime's typed serialization
//! (`alloc_preserve`, `read`, `write`, `unpreserve_free`, `restore_free`) and a simulated
//! kexec that hands the preserved blocks over, with accounting so tests prove nothing leaks.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use luo_abi::kho::{KhoService, VmallocDesc, pages_for};
use luo_abi::{Errno, PAGE_SIZE, PhysAddr, Result};

#[derive(Default)]
struct State {
    mem: Vec<u8>,
    outgoing: BTreeMap<u64, usize>,
    incoming: BTreeMap<u64, usize>,
    claimed: BTreeMap<u64, usize>,
    kexecs: u64,
}

/// Flat memory with a bump allocator. Page 0 is never handed out, so no object is at NULL.
pub struct VecKho {
    st: Mutex<State>,
}

impl Default for VecKho {
    fn default() -> Self {
        VecKho::new()
    }
}

impl VecKho {
    /// Empty memory.
    pub fn new() -> Self {
        VecKho {
            st: Mutex::new(State {
                mem: vec![0; PAGE_SIZE],
                ..State::default()
            }),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Simulated kexec: what is preserved becomes the incoming map; incoming blocks never
    /// restored are dropped, as upstream drops unretrieved state at the next kexec.
    pub fn kexec(&self) {
        let mut s = self.st();
        s.incoming = std::mem::take(&mut s.outgoing);
        s.kexecs += 1;
    }

    /// Blocks preserved in this kernel and not released.
    pub fn outgoing_blocks(&self) -> usize {
        self.st().outgoing.len()
    }

    /// Blocks handed over by the previous kernel and not restored (claimed and not released
    /// count as not restored).
    pub fn incoming_blocks(&self) -> usize {
        let s = self.st();
        s.incoming.len() + s.claimed.len()
    }

    fn range(s: &State, phys: PhysAddr, len: usize) -> Result<std::ops::Range<usize>> {
        let start = usize::try_from(phys.as_u64()).map_err(|_| Errno::EFAULT)?;
        let end = start.checked_add(len).ok_or(Errno::EFAULT)?;
        if start < PAGE_SIZE || end > s.mem.len() {
            return Err(Errno::EFAULT);
        }
        Ok(start..end)
    }
}

impl KhoService for VecKho {
    fn is_enabled(&self) -> bool {
        true
    }
    fn is_kho_boot(&self) -> bool {
        self.st().kexecs > 0
    }
    fn alloc_folio(&self, _: u32) -> Result<PhysAddr> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Releases a block claimed by `restore_folio`.
    fn free_folio(&self, phys: PhysAddr, _: u32) -> Result {
        self.st()
            .claimed
            .remove(&phys.as_u64())
            .map(drop)
            .ok_or(Errno::EINVAL)
    }
    fn preserve_folio(&self, _: PhysAddr, _: u32) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve_folio(&self, _: PhysAddr, _: u32) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    /// Claims an incoming block (once): its order is that of its page count.
    fn restore_folio(&self, phys: PhysAddr) -> Result<u32> {
        let mut s = self.st();
        let len = s.incoming.remove(&phys.as_u64()).ok_or(Errno::EINVAL)?;
        s.claimed.insert(phys.as_u64(), len);
        Ok((len / PAGE_SIZE).next_power_of_two().trailing_zeros())
    }
    fn preserve_pages(&self, _: PhysAddr, _: usize) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve_pages(&self, _: PhysAddr, _: usize) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn restore_pages(&self, _: PhysAddr, _: usize) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn preserve_vmalloc(&self, _: &[PhysAddr], _: u16) -> Result<VmallocDesc> {
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve_vmalloc(&self, _: &VmallocDesc) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn restore_vmalloc(&self, _: &VmallocDesc) -> Result<Vec<PhysAddr>> {
        Err(Errno::EOPNOTSUPP)
    }
    fn alloc_preserve(&self, size: usize) -> Result<PhysAddr> {
        let mut s = self.st();
        let len = pages_for(size.max(1)) * PAGE_SIZE;
        let at = s.mem.len();
        s.mem.resize(at + len, 0);
        s.outgoing.insert(at as u64, len);
        Ok(PhysAddr::new(at as u64))
    }
    fn unpreserve_free(&self, phys: PhysAddr) -> Result {
        self.st()
            .outgoing
            .remove(&phys.as_u64())
            .map(drop)
            .ok_or(Errno::EINVAL)
    }
    fn restore_free(&self, phys: PhysAddr) -> Result {
        self.st()
            .incoming
            .remove(&phys.as_u64())
            .map(drop)
            .ok_or(Errno::EINVAL)
    }
    fn add_subtree(&self, _: &str, _: PhysAddr, _: usize) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn remove_subtree(&self, _: PhysAddr) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn retrieve_subtree(&self, _: &str) -> Result<(PhysAddr, usize)> {
        Err(Errno::ENOENT)
    }
    fn read(&self, phys: PhysAddr, buf: &mut [u8]) -> Result {
        let s = self.st();
        let r = VecKho::range(&s, phys, buf.len())?;
        buf.copy_from_slice(&s.mem[r]);
        Ok(())
    }
    fn write(&self, phys: PhysAddr, buf: &[u8]) -> Result {
        let mut s = self.st();
        let r = VecKho::range(&s, phys, buf.len())?;
        s.mem[r].copy_from_slice(buf);
        Ok(())
    }
}
