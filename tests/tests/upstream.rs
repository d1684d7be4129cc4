// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The generated Rust ABI types against the numbers upstream publishes
//! (include/uapi/linux/liveupdate.h, include/linux/kho/abi/luo.h, the feature-negotiation proposal): written out here, not taken from
//! the spec, so a spec edit that moves a byte fails this test.

use core::mem::{offset_of, size_of};

use luo_generated::{kho, luo, memfd, uapi};

#[test]
fn uapi_structs_and_ioctl_numbers() {
    assert_eq!(size_of::<uapi::liveupdate_ioctl_create_session>(), 72);
    assert_eq!(size_of::<uapi::liveupdate_ioctl_retrieve_session>(), 72);
    assert_eq!(size_of::<uapi::liveupdate_session_preserve_fd>(), 16);
    assert_eq!(offset_of!(uapi::liveupdate_session_preserve_fd, token), 8);
    assert_eq!(size_of::<uapi::liveupdate_session_retrieve_fd>(), 16);
    assert_eq!(size_of::<uapi::liveupdate_session_finish>(), 8);
    assert_eq!(size_of::<uapi::v2::liveupdate_session_get_name>(), 72);
    assert_eq!(offset_of!(uapi::v2::liveupdate_session_get_name, name), 8);
    assert_eq!(uapi::LIVEUPDATE_IOCTL_TYPE, 0xBA);
    assert_eq!(uapi::LIVEUPDATE_IOCTL_CREATE_SESSION, 0xBA00);
    assert_eq!(uapi::LIVEUPDATE_IOCTL_RETRIEVE_SESSION, 0xBA01);
    assert_eq!(uapi::v2::LIVEUPDATE_SESSION_PRESERVE_FD, 0xBA40);
    assert_eq!(uapi::v2::LIVEUPDATE_SESSION_RETRIEVE_FD, 0xBA41);
    assert_eq!(uapi::v2::LIVEUPDATE_SESSION_FINISH, 0xBA42);
    assert_eq!(uapi::v2::LIVEUPDATE_SESSION_GET_NAME, 0xBA43);
    assert_eq!(uapi::LIVEUPDATE_SESSION_NAME_LENGTH, 64);
}

#[test]
fn luo_v5_handover() {
    assert_eq!(luo::v5::LUO_ABI_COMPATIBLE, "luo-v5");
    assert_eq!(luo::v5::LUO_ABI_COMPAT_LEN, 8);
    assert_eq!(size_of::<luo::v5::luo_ser>(), 32);
    assert_eq!(offset_of!(luo::v5::luo_ser, liveupdate_num), 8);
    assert_eq!(offset_of!(luo::v5::luo_ser, sessions_pa), 16);
    assert_eq!(offset_of!(luo::v5::luo_ser, flbs_pa), 24);
    assert_eq!(size_of::<luo::v5::luo_session_ser>(), 80);
    assert_eq!(size_of::<luo::luo_file_ser>(), 64);
    assert_eq!(offset_of!(luo::luo_file_ser, data), 48);
    assert_eq!(offset_of!(luo::luo_file_ser, token), 56);
    assert_eq!(size_of::<luo::v5::luo_flb_ser>(), 64);
    assert_eq!(size_of::<luo::v5::luo_flb_header_ser>(), 16);
    assert_eq!(luo::v5::LUO_FLB_MAX, 63);
}

#[test]
fn older_and_next_luo_formats() {
    assert_eq!(luo::v1::LUO_FDT_COMPATIBLE, "luo-v1");
    assert_eq!(luo::v1::LUO_FDT_SESSION_COMPATIBLE, "luo-session-v2");
    assert_eq!(size_of::<luo::v1::luo_session_ser>(), 80);
    assert_eq!(size_of::<luo::session_v1::luo_session_ser>(), 88);
    assert_eq!(luo::v1_flb::LUO_FDT_FLB_COMPATIBLE, "luo-flb-v1");
    assert_eq!(size_of::<luo::next::luo_feature_hdr>(), 128);
    assert_eq!(size_of::<luo::next::luo_ser>(), 152);
    assert_eq!(offset_of!(luo::next::luo_ser, liveupdate_num), 128);
}

#[test]
fn memfd_versions() {
    assert_eq!(memfd::v1::MEMFD_LUO_FH_COMPATIBLE, "memfd-v1");
    assert_eq!(memfd::v2::MEMFD_LUO_FH_COMPATIBLE, "memfd-v2");
    assert_eq!(size_of::<memfd::v1::memfd_luo_ser>(), 40);
    assert_eq!(size_of::<memfd::v2::memfd_luo_ser>(), 48);
    assert_eq!(offset_of!(memfd::v2::memfd_luo_ser, seals), 16);
    assert_eq!(offset_of!(memfd::v2::memfd_luo_ser, folios), 32);
    assert_eq!(size_of::<memfd::next::memfd_luo_ser>(), 176);
    assert_eq!(memfd::v2::MEMFD_LUO_ALL_SEALS, 0x3f);
    assert_eq!(memfd::MEMFD_LUO_FOLIO_DIRTY, 1);
    assert_eq!(memfd::MEMFD_LUO_FOLIO_UPTODATE, 2);
    assert_eq!(size_of::<kho::kho_vmalloc>(), 16);
    assert_eq!(size_of::<kho::kho_vmalloc_chunk>(), 4096);
}

#[test]
fn folio_bitfields_pack_pfn_and_flags_into_one_u64() {
    let mut f: memfd::memfd_luo_folio_ser = zerocopy::FromZeros::new_zeroed();
    f.set_pfn(0xF_FFFF_FFFF_FFFF);
    f.set_flags(0x3);
    f.index = 7;
    let bytes = zerocopy::IntoBytes::as_bytes(&f);
    assert_eq!(size_of::<memfd::memfd_luo_folio_ser>(), 16);
    // pfn in bits 0..52, flags in bits 52..64 (little endian, GCC order).
    assert_eq!(
        u64::from_le_bytes(bytes[..8].try_into().unwrap()),
        0x003F_FFFF_FFFF_FFFF
    );
    assert_eq!(f.pfn(), 0xF_FFFF_FFFF_FFFF);
    assert_eq!(f.flags(), 3);
    f.set_pfn(u64::MAX); // bits beyond 52 are dropped, flags untouched
    assert_eq!(f.flags(), 3);
}

#[test]
fn every_bitfield_probe_fills_its_struct() {
    // Runs every generated bitfield setter (also under Miri): each probe
    // writes exactly the struct's size, and sets a bit in every unit.
    for (path, probe) in luo_generated::layouts::BITFIELD_PROBES {
        let info = luo_generated::layouts::STRUCTS
            .iter()
            .find(|s| s.path == *path)
            .expect("registered");
        let mut buf = [0u8; 256];
        assert_eq!(probe(&mut buf), info.size, "{path}");
        assert!(
            buf[..info.size].iter().any(|b| *b != 0),
            "{path}: nothing written"
        );
    }
}

#[test]
fn feature_bits_and_masks_of_the_next_abi() {
    // Feature negotiation: core bits NUMBER/SESSIONS/FLBS, all supported, required and active;
    // memfd bits SEALS/FOLIOS likewise.
    assert_eq!(luo::next::LUO_FEATURE_NUMBER, 1);
    assert_eq!(luo::next::LUO_FEATURE_SESSIONS, 2);
    assert_eq!(luo::next::LUO_FEATURE_FLBS, 4);
    assert_eq!(luo::next::LUO_CORE_FEATURES_SUPP, 0x7);
    assert_eq!(luo::next::LUO_CORE_FEATURES_REQ, 0x7);
    assert_eq!(luo::next::LUO_CORE_FEATURES_ACTIVE, 0x7);
    assert_eq!(memfd::next::MEMFD_LUO_FEATURE_SEALS, 1);
    assert_eq!(memfd::next::MEMFD_LUO_FEATURE_FOLIOS, 2);
    assert_eq!(memfd::next::MEMFD_LUO_FEATURES_SUPP, 0x3);
    assert_eq!(memfd::v2::COMPATIBLE, "memfd-v2");
    assert_eq!(memfd::next::COMPATIBLE, "memfd");
    assert_eq!(luo::v5::VERSION_ID, "v5");
}

#[test]
fn generated_types_check_their_reserved_members() {
    use luo_abi::abi::AbiType;
    let mut finish: uapi::liveupdate_session_finish = zerocopy::FromZeros::new_zeroed();
    assert!(finish.check_reserved().is_ok());
    finish.reserved = 1;
    let err = finish.check_reserved().unwrap_err();
    assert_eq!(
        (err.ty, err.field),
        ("liveupdate_session_finish", "reserved")
    );
    // Nested: a non-zero reserved word of the feature header inside memfd_luo_ser.
    let mut ser: memfd::next::memfd_luo_ser = zerocopy::FromZeros::new_zeroed();
    assert!(ser.check_reserved().is_ok());
    let mut hdr = ser.features;
    hdr.reserved[12] = 9;
    ser.features = hdr;
    assert_eq!(ser.check_reserved().unwrap_err().field, "reserved");
}

#[test]
fn generated_migration_from_memfd_v1_to_v2() {
    // spec/memfd.toml: v2 `migrates_from = "v1"`, seals and flags default 0.
    let mut old: memfd::v1::memfd_luo_ser = zerocopy::FromZeros::new_zeroed();
    old.pos = 7;
    old.size = 4096 * 3;
    old.nr_folios = 3;
    let new = memfd::v2::memfd_luo_ser::from(old);
    let (pos, size, seals, flags, nr) = (new.pos, new.size, new.seals, new.flags, new.nr_folios);
    assert_eq!((pos, size, seals, flags, nr), (7, 4096 * 3, 0, 0, 3));
    let (new_folios, old_folios) = (new.folios, old.folios);
    assert_eq!(
        zerocopy::IntoBytes::as_bytes(&new_folios),
        zerocopy::IntoBytes::as_bytes(&old_folios)
    );
}

/// The 7.2 KHO ABI headers beside LUO's (include/linux/kho/abi/kexec_metadata.h and
/// memblock.h of 7.2.13): names, include guards, constants and the packed metadata record.
#[test]
#[cfg_attr(
    miri,
    ignore = "reads the generated headers from disk (Miri isolates the host)"
)]
fn kexec_metadata_and_memblock_as_in_7_2() {
    use luo_generated::{kexec_metadata, memblock};
    assert_eq!(kexec_metadata::v1::KHO_KEXEC_METADATA_VERSION, 1);
    assert_eq!(kexec_metadata::v1::KHO_METADATA_NODE_NAME, "kexec-metadata");
    assert_eq!(size_of::<kexec_metadata::v1::kho_kexec_metadata>(), 73);
    assert_eq!(
        offset_of!(kexec_metadata::v1::kho_kexec_metadata, previous_release),
        4
    );
    assert_eq!(
        offset_of!(kexec_metadata::v1::kho_kexec_metadata, kexec_count),
        69
    );
    assert_eq!(memblock::v1::MEMBLOCK_KHO_FDT, "memblock");
    assert_eq!(memblock::v1::MEMBLOCK_KHO_NODE_COMPATIBLE, "memblock-v1");
    assert_eq!(
        memblock::v1::RESERVE_MEM_KHO_NODE_COMPATIBLE,
        "reserve-mem-v1"
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../generated/include");
    for (h, guard) in [
        ("kexec_metadata.h", "_LINUX_KHO_ABI_KEXEC_METADATA_H"),
        ("memblock.h", "_LINUX_KHO_ABI_MEMBLOCK_H"),
    ] {
        let text = std::fs::read_to_string(root.join("linux/kho/abi").join(h)).expect(h);
        assert!(
            text.contains(&format!("#ifndef {guard}\n#define {guard}")),
            "{h}"
        );
    }
}
