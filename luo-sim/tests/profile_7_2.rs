// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The simulator's default profile is Linux 7.2 as the real 7.2.13 kernel behaves
//! (`spec/kernels/7.2.toml`): it writes luo-v5 and memfd-v2 and, like upstream, reads nothing
//! else, so a handover of an older kernel is refused at boot (7.2.13's luo_early_startup:
//! "LUO state is incompatible", live update disabled) where the model's 7.3 migrates it.

use luo_core::{BootOptions, ImageError, KernelVersion, KexecError};

fn opts(version: KernelVersion) -> BootOptions {
    luo_sim::machine::boot_options(version)
}

/// A machine of `from` with one session holding one memfd, kexec'd into `to`.
fn update(from: KernelVersion, to: KernelVersion) -> Result<(), KexecError> {
    let k = luo_core::Kernel::boot(&opts(from), None).expect("boot");
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "p").unwrap();
    let m = k.memfd_create("m").unwrap();
    k.pwrite(m, 0, b"seven-two").unwrap();
    k.preserve_fd(s, m, 1).unwrap();
    let k = k.kexec_into(&opts(to))?;
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "p").unwrap();
    let f = k.retrieve_fd(s, 1).unwrap();
    let mut buf = [0u8; 9];
    k.pread(f, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"seven-two");
    Ok(())
}

#[test]
fn the_simulator_plays_7_2() {
    assert_eq!(luo_sim::machine::SIMULATED, KernelVersion::V7_2);
    assert_eq!(
        luo_sim::machine::default_options().version,
        KernelVersion::V7_2
    );
    assert_eq!("7.2".parse::<KernelVersion>(), Ok(KernelVersion::V7_2));
}

#[test]
fn seven_two_reads_what_it_and_7_3_write() {
    update(KernelVersion::V7_2, KernelVersion::V7_2).unwrap();
    update(KernelVersion::V7_3, KernelVersion::V7_2).unwrap();
    update(KernelVersion::V7_2, KernelVersion::V7_3).unwrap();
}

#[test]
fn older_formats_are_refused_at_boot() {
    for (from, found) in [
        (KernelVersion::V6_19, "luo-v1"),
        (KernelVersion::V7_0, "luo-v1"),
    ] {
        match update(from, KernelVersion::V7_2) {
            Err(KexecError::Boot(e @ ImageError::UnsupportedFormat { .. })) => {
                assert!(e.to_string().contains(found), "{from} -> 7.2: {e}");
            }
            Err(e) => panic!("{from} -> 7.2: {e}"),
            Ok(()) => panic!("{from} -> 7.2 must be refused (7.2 reads luo-v5 only)"),
        }
    }
}
