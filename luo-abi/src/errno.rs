// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Typed kernel error numbers.
//!
//! Upstream LUO returns `-errno` from every ioctl, callback and registration function. Here the
//! same values travel as [`Errno`], and become a negative `int` again only where a C caller
//! expects one ([`Errno::to_neg`], [`to_result`]). Values are those of Linux on x86 (the
//! asm-generic numbering); [`Errno::ENOIOCTLCMD`] is kernel-internal and never reaches
//! userspace (see [`Errno::to_user`]).

use core::fmt;
use core::num::NonZeroI32;

/// The largest error number the kernel encodes in a return value (`MAX_ERRNO`).
pub const MAX_ERRNO: i32 = 4095;

/// A kernel error number, stored as the positive value (`EINVAL` is 22).
///
/// The invariant `1 <= value <= MAX_ERRNO` holds for every `Errno`, so `-value` is always a
/// valid negative kernel return code.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Errno(NonZeroI32);

/// `Result` with [`Errno`] as the default error, as the kernel's `kernel::error::Result`.
pub type Result<T = (), E = Errno> = core::result::Result<T, E>;

macro_rules! errnos {
    ($($(#[$doc:meta])* $name:ident = $val:literal,)*) => {
        impl Errno {
            $(
                $(#[$doc])*
                pub const $name: Errno = Errno::from_const($val);
            )*

            /// The kernel's name of this error number (`"EINVAL"`), or `"E?"` for a value
            /// without a constant here.
            pub const fn name(self) -> &'static str {
                match self.0.get() {
                    $($val => stringify!($name),)*
                    _ => "E?",
                }
            }
        }
    };
}

errnos! {
    /// Operation not permitted.
    EPERM = 1,
    /// No such file or directory (unknown token, session or compatible string).
    ENOENT = 2,
    /// No such process.
    ESRCH = 3,
    /// Interrupted system call.
    EINTR = 4,
    /// I/O error.
    EIO = 5,
    /// No such device or address.
    ENXIO = 6,
    /// Argument list too long (extensible struct with a non-zero tail).
    E2BIG = 7,
    /// Bad file number.
    EBADF = 9,
    /// Try again.
    EAGAIN = 11,
    /// Out of memory.
    ENOMEM = 12,
    /// Permission denied.
    EACCES = 13,
    /// Bad address.
    EFAULT = 14,
    /// Device or resource busy (object already preserved, `can_finish` refused).
    EBUSY = 16,
    /// Already exists (duplicate session name, token or compatible string).
    EEXIST = 17,
    /// No such device.
    ENODEV = 19,
    /// Invalid argument.
    EINVAL = 22,
    /// File table overflow.
    ENFILE = 23,
    /// Too many open files.
    EMFILE = 24,
    /// Not a typewriter (unknown ioctl as userspace sees it).
    ENOTTY = 25,
    /// File too large.
    EFBIG = 27,
    /// No space left on device.
    ENOSPC = 28,
    /// Math result not representable.
    ERANGE = 34,
    /// Resource deadlock would occur.
    EDEADLK = 35,
    /// File name too long.
    ENAMETOOLONG = 36,
    /// Function not implemented.
    ENOSYS = 38,
    /// No data available.
    ENODATA = 61,
    /// Value too large for defined data type.
    EOVERFLOW = 75,
    /// Operation not supported on transport endpoint.
    EOPNOTSUPP = 95,
    /// Address already in use.
    EADDRINUSE = 98,
    /// Connection timed out.
    ETIMEDOUT = 110,
    /// Operation canceled.
    ECANCELED = 125,
    /// No ioctl command: kernel-internal, userspace sees [`Errno::ENOTTY`].
    ENOIOCTLCMD = 515,
}

impl Errno {
    /// Builds a constant; panics at compile time on a value outside `1..=MAX_ERRNO`.
    const fn from_const(errno: i32) -> Errno {
        match Errno::from_raw(errno) {
            Some(e) => e,
            None => panic!("errno out of range"),
        }
    }

    /// Wraps a positive error number, `None` unless `1 <= errno <= MAX_ERRNO`.
    pub const fn from_raw(errno: i32) -> Option<Errno> {
        if errno < 1 || errno > MAX_ERRNO {
            return None;
        }
        match NonZeroI32::new(errno) {
            Some(v) => Some(Errno(v)),
            None => None,
        }
    }

    /// Decodes a negative kernel return code (`-22` gives `EINVAL`), `None` unless
    /// `-MAX_ERRNO <= ret <= -1`.
    pub const fn from_neg(ret: i32) -> Option<Errno> {
        if ret >= 0 {
            return None;
        }
        // `ret` is negative here and `i32::MIN` is rejected by the range check in `from_raw`.
        Errno::from_raw(ret.wrapping_neg())
    }

    /// The positive error number (`22` for `EINVAL`).
    pub const fn to_raw(self) -> i32 {
        self.0.get()
    }

    /// The negative value a C callback or syscall returns (`-22` for `EINVAL`).
    pub const fn to_neg(self) -> i32 {
        -self.0.get()
    }

    /// The error number userspace sees: `ENOIOCTLCMD` becomes `ENOTTY` as in the kernel's
    /// ioctl path; every other value is unchanged.
    pub const fn to_user(self) -> Errno {
        if self.0.get() == Errno::ENOIOCTLCMD.0.get() {
            Errno::ENOTTY
        } else {
            self
        }
    }
}

/// Converts a C-style return code into a [`Result`], as the kernel's `to_result`: negative
/// values are errors, zero and positive values are success. A negative value outside the
/// errno range becomes `EINVAL`.
pub const fn to_result(ret: i32) -> Result {
    if ret >= 0 {
        return Ok(());
    }
    match Errno::from_neg(ret) {
        Some(e) => Err(e),
        None => Err(Errno::EINVAL),
    }
}

/// Converts a [`Result`] into the C return code: `0` on success, `-errno` on error.
pub const fn to_neg(result: Result) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => e.to_neg(),
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_raw())
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({} = {})", self.name(), self.to_raw())
    }
}

impl core::error::Error for Errno {}

impl From<Errno> for i32 {
    /// The negative return code, as [`Errno::to_neg`].
    fn from(e: Errno) -> i32 {
        e.to_neg()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    const ALL: &[(Errno, i32, &str)] = &[
        (Errno::EPERM, 1, "EPERM"),
        (Errno::ENOENT, 2, "ENOENT"),
        (Errno::EIO, 5, "EIO"),
        (Errno::E2BIG, 7, "E2BIG"),
        (Errno::EBADF, 9, "EBADF"),
        (Errno::EAGAIN, 11, "EAGAIN"),
        (Errno::ENOMEM, 12, "ENOMEM"),
        (Errno::EFAULT, 14, "EFAULT"),
        (Errno::EBUSY, 16, "EBUSY"),
        (Errno::EEXIST, 17, "EEXIST"),
        (Errno::ENODEV, 19, "ENODEV"),
        (Errno::EINVAL, 22, "EINVAL"),
        (Errno::ENOTTY, 25, "ENOTTY"),
        (Errno::EFBIG, 27, "EFBIG"),
        (Errno::ENOSPC, 28, "ENOSPC"),
        (Errno::EDEADLK, 35, "EDEADLK"),
        (Errno::ENODATA, 61, "ENODATA"),
        (Errno::EOVERFLOW, 75, "EOVERFLOW"),
        (Errno::EOPNOTSUPP, 95, "EOPNOTSUPP"),
        (Errno::EADDRINUSE, 98, "EADDRINUSE"),
        (Errno::ENOIOCTLCMD, 515, "ENOIOCTLCMD"),
    ];

    #[test]
    fn values_and_names() {
        for &(e, raw, name) in ALL {
            assert_eq!(e.to_raw(), raw, "{name}");
            assert_eq!(e.to_neg(), -raw, "{name}");
            assert_eq!(e.name(), name);
        }
    }

    #[test]
    fn round_trips() {
        for &(e, raw, _) in ALL {
            assert_eq!(Errno::from_neg(e.to_neg()), Some(e));
            assert_eq!(Errno::from_raw(raw), Some(e));
            assert_eq!(to_result(e.to_neg()), Err(e));
            assert_eq!(to_neg(Err(e)), -raw);
        }
        for raw in 1..=MAX_ERRNO {
            let e = Errno::from_raw(raw).unwrap();
            assert_eq!(Errno::from_neg(e.to_neg()), Some(e));
        }
    }

    #[test]
    fn out_of_range() {
        for bad in [0, -1, MAX_ERRNO + 1, i32::MIN, i32::MAX] {
            assert_eq!(Errno::from_raw(bad), None, "{bad}");
        }
        for bad in [0, 1, 22, -(MAX_ERRNO + 1), i32::MIN] {
            assert_eq!(Errno::from_neg(bad), None, "{bad}");
        }
        assert_eq!(to_result(0), Ok(()));
        assert_eq!(to_result(7), Ok(()));
        assert_eq!(to_result(i32::MIN), Err(Errno::EINVAL));
        assert_eq!(to_neg(Ok(())), 0);
    }

    #[test]
    fn formatting() {
        assert_eq!(format!("{}", Errno::EINVAL), "EINVAL (22)");
        assert_eq!(format!("{:?}", Errno::EBUSY), "Errno(EBUSY = 16)");
        assert_eq!(Errno::from_raw(4000).unwrap().name(), "E?");
    }

    #[test]
    fn user_visible() {
        assert_eq!(Errno::ENOIOCTLCMD.to_user(), Errno::ENOTTY);
        assert_eq!(Errno::EINVAL.to_user(), Errno::EINVAL);
        assert_eq!(i32::from(Errno::ENOENT), -2);
        assert_eq!(core::mem::size_of::<Option<Errno>>(), 4);
    }
}
