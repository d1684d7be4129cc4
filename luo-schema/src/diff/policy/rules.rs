// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The rule IDs a finding carries, each with its one-line meaning.

/// Every rule ID with its one-line meaning (for `--help` and the docs).
pub const RULES: &[(&str, &str)] = &[
    (
        "COMPAT_NOT_BUMPED",
        "handover layout changed but the compatible string did not",
    ),
    ("COMPAT_BUMPED", "the compatible string changed"),
    (
        "COMPAT_VERSIONLESS",
        "the compatible string lost its version; the version is now a member of the data",
    ),
    (
        "STRUCT_VERSION_BUMPED",
        "same versionless compatible string, new version number in the data",
    ),
    ("READER_KEPT", "the new kernel still reads the old version"),
    (
        "READER_REMOVAL_DECLARED",
        "the new kernel declares it no longer reads the old version",
    ),
    (
        "READER_NOT_KEPT",
        "the new kernel cannot read what the old one writes",
    ),
    ("STRUCT_ADDED", "a new struct"),
    ("STRUCT_REMOVED", "a struct is gone"),
    ("STRUCT_SIZE_CHANGED", "a struct's size changed"),
    ("ALIGN_CHANGED", "a struct's alignment changed"),
    ("PACKED_CHANGED", "__packed added or removed"),
    ("FIELD_ADDED", "a member was added to a handover struct"),
    ("FIELD_REMOVED", "a member is gone"),
    (
        "FIELD_RENAMED",
        "a member has a new name at the same place (source change only)",
    ),
    ("FIELD_MOVED", "a member's offset changed"),
    (
        "FIELD_TYPE_CHANGED",
        "a member's type, width or signedness changed",
    ),
    (
        "FIELD_SIZE_CHANGED",
        "a member's size or array length changed",
    ),
    ("BITFIELD_CHANGED", "a bitfield's position or width changed"),
    (
        "FIELD_SPLIT_INTO_BITS",
        "a member was declared as bitfields of its type in its own unit (source change only)",
    ),
    (
        "RESERVED_CONSUMED",
        "a reserved must-be-zero member was given a meaning",
    ),
    ("CONSTANT_CHANGED", "a constant or flag value changed"),
    ("CONSTANT_ADDED", "a new constant"),
    ("CONSTANT_REMOVED", "a constant is gone"),
    (
        "ENUM_SENTINEL_MOVED",
        "an enum sentinel (`*_MAX`, `*_NR`, `*_COUNT`, `*_LAST`) moved",
    ),
    (
        "FDT_CHANGED",
        "an FDT node or property name or compatible changed",
    ),
    ("PAGE_SIZE_DEPENDENT", "a layout now depends on PAGE_SIZE"),
    (
        "UAPI_GROW_AT_END",
        "a size-prefixed uAPI struct grew at the end",
    ),
    ("UAPI_BREAK", "a uAPI layout changed incompatibly"),
    (
        "UAPI_MIN_SIZE_RAISED",
        "a uAPI struct's minimum size rose: old userspace gets EINVAL",
    ),
    (
        "UAPI_ARCH_DEPENDENT",
        "a uAPI layout differs between i386 and x86_64 (needs compat_ioctl)",
    ),
    ("IOCTL_ADDED", "a new ioctl"),
    ("IOCTL_REMOVED", "an ioctl is gone"),
    ("IOCTL_CHANGED", "an ioctl's number or argument changed"),
    (
        "KERNEL_API_CHANGED",
        "the in-kernel C API changed (not part of a handover)",
    ),
    (
        "NEGOTIATION_CHANGED",
        "the component switched versioning scheme",
    ),
    (
        "HANDLER_NAME_CHANGED",
        "a feature-negotiated handler name changed",
    ),
    (
        "FEATURE_OPTIONAL_ADDED",
        "a new optional feature (supported and active, not required)",
    ),
    (
        "FEATURE_SUPPORTED_ADDED",
        "a new feature published as supported only (a transition kernel)",
    ),
    (
        "FEATURE_NOW_REQUIRED",
        "a feature became required: kernels that do not know it cannot read",
    ),
    (
        "FEATURE_NOT_TRANSITIONED",
        "a required feature was not published as supported in an earlier release",
    ),
    (
        "FEATURE_BIT_REUSED",
        "a feature bit now names a different feature",
    ),
    ("FEATURE_BIT_RENUMBERED", "a feature moved to another bit"),
    ("FEATURE_REMOVED", "a feature bit is gone"),
    (
        "FEATURE_STATE_CHANGED",
        "a feature's supported/active state changed",
    ),
    (
        "FEATURE_FIELD_UNGATED",
        "a member was added to a feature-negotiated struct without a feature",
    ),
    ("FEATURE_GATED_FIELD_MOVED", "a feature-gated member moved"),
    (
        "FEATURE_LAYOUT_CHANGED",
        "a feature-negotiated struct changed other than by growing at the end",
    ),
    (
        "COMPONENT_ADDED",
        "a component exists only in the new kernel",
    ),
    (
        "COMPONENT_REMOVED",
        "a component exists only in the old kernel",
    ),
];
