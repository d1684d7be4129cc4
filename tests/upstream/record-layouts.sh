#!/usr/bin/env bash
# Records the layout of every struct the real kernel hands over or exposes to userspace:
# each struct defined in include/linux/kho/abi/*.h and include/uapi/linux/liveupdate.h of a
# Linux source tree, compiled from those very headers with gcc -g (x86_64, 4 KiB pages) and
# read back from the DWARF with gdb's `ptype /o` (pahole's view: every member's offset and
# size, bitfields to the bit). Facts only: sizes, member names, offsets; no header text.
#
#   tests/upstream/record-layouts.sh SRC > tests/upstream/layouts-7.2.13.txt
#
# SRC is an unpacked Debian linux-source-7.2 tree (tests/kernel/build.sh OUT --config-only
# leaves one in OUT/linux-source-7.2). Needs gcc, gdb and the system's uAPI headers.
# The kernel-internal headers those files include (linux/types.h' u32, __packed,
# DECLARE_BITMAP, asm/page.h, const_ilog2, ...) are stood in for by a few definitions with
# the kernel's x86_64 meaning.
#
# Output, one line each:  struct NAME SIZE   and   member NAME FIELD BIT_OFFSET BIT_SIZE
set -euo pipefail
SRC=${1:?usage: record-layouts.sh LINUX_SOURCE_TREE}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/shim/linux" "$T/shim/asm"
cat > "$T/shim/linux/types.h" <<'H'
#include_next <linux/types.h>
typedef __u8 u8; typedef __u16 u16; typedef __u32 u32; typedef __u64 u64;
typedef __s8 s8; typedef __s16 s16; typedef __s32 s32; typedef __s64 s64;
typedef u64 phys_addr_t;
#define __packed __attribute__((packed))
#define BITS_PER_LONG 64
#define DECLARE_BITMAP(name, bits) unsigned long name[((bits) + BITS_PER_LONG - 1) / BITS_PER_LONG]
#ifndef static_assert
#define static_assert(e, ...) _Static_assert(e, #e)
#endif
H
printf '#define BITS_PER_BYTE 8\n#define BIT(n) (1UL << (n))\n' > "$T/shim/linux/bits.h"
printf '#define const_ilog2(n) (63 - __builtin_clzll(n))\n' > "$T/shim/linux/log2.h"
printf '#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))\n' > "$T/shim/linux/math.h"
printf '#define ALIGN(x, a) (((x) + (a) - 1) & ~((__typeof__(x))(a) - 1))\n' > "$T/shim/linux/align.h"
printf '#define PAGE_SHIFT 12\n#define PAGE_SIZE (1UL << PAGE_SHIFT)\n' > "$T/shim/asm/page.h"
mkdir -p "$T/inc/linux/kho" "$T/inc/uapi/linux"
cp -r "$SRC/include/linux/kho/abi" "$T/inc/linux/kho/"
cp "$SRC/include/uapi/linux/liveupdate.h" "$T/inc/uapi/linux/"
structs=$(grep -ho '^struct [a-z_0-9]* {' "$T"/inc/linux/kho/abi/*.h "$T/inc/uapi/linux/liveupdate.h" |
  awk '{print $2}' | sort -u)
{
  for h in "$T"/inc/linux/kho/abi/*.h; do echo "#include <linux/kho/abi/$(basename "$h")>"; done
  echo '#include <uapi/linux/liveupdate.h>'
  for s in $structs; do echo "struct $s *p_$s;"; done
} > "$T/probe.c"
gcc -g -O0 -c -std=gnu11 -I "$T/shim" -I "$T/inc" "$T/probe.c" -o "$T/probe.o"
args=()
for s in $structs; do args+=(-ex "ptype /o struct $s"); done
gdb -batch -nx "${args[@]}" "$T/probe.o" | awk '
  # The struct being listed, and the top-level member lines of `ptype /o` (4 spaces
  # after the comment); a union or struct member opens a block named at its closing line.
  /type = struct [a-z_0-9]+ \{/ { for (i = 1; i <= NF; i++) if ($i == "struct") name = $(i + 1); depth = 0; next }
  /^\/\* *[0-9]+(: *[0-9]+)? *\| *[0-9]+ \*\/    [^ ]/ {
    line = $0
    off = line; sub(/^\/\* */, "", off); sub(/ *\|.*/, "", off)
    byte = off; bit = 0
    if (off ~ /:/) { split(off, p, ":"); byte = p[1] + 0; bit = p[2] + 0 }
    size = line; sub(/^[^|]*\| */, "", size); sub(/ .*/, "", size)
    decl = line; sub(/^[^*]*\*\/    /, "", decl)
    if (decl ~ /\{$/) { open_off = byte * 8 + bit; open_size = size * 8; depth = 1; next }
    width = size * 8
    if (decl ~ / : [0-9]+;$/) { w = decl; sub(/.* : /, "", w); sub(/;/, "", w); width = w + 0; sub(/ : [0-9]+;$/, ";", decl) }
    sub(/;$/, "", decl); sub(/\[.*$/, "", decl); n = split(decl, parts, /[ *]+/)
    printf "member %s %s %d %d\n", name, parts[n], byte * 8 + bit, width
    next
  }
  depth == 1 && /^                               \} [a-z_0-9]+;$/ { m = $0; sub(/^ +\} /, "", m); sub(/;/, "", m); printf "member %s %s %d %d\n", name, m, open_off, open_size; depth = 0; next }
  /^                               \/\* total size \(bytes\): *[0-9]+ \*\/$/ { sz = $0; sub(/.*: */, "", sz); sub(/ .*/, "", sz); printf "struct %s %d\n", name, sz }
'
