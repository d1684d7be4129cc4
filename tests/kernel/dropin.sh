#!/usr/bin/env bash
# The drop-in check: are this repository's generated headers true drop-ins for upstream's in the
# real kernel? Linux 7.2.13 (Debian's linux-source-7.2, configured as build.sh does) is built
# twice: stock, and with every generated KHO ABI header that the tree also has
# (generated/include/linux/kho/abi/*.h -> include/linux/kho/abi/) and the uAPI header
# (generated/include/uapi/linux/liveupdate.h -> include/uapi/linux/liveupdate.h) in place of
# upstream's. Then:
#   1. build: both trees have the same .config; the swapped headers are touched in both and both
#      are rebuilt (bzImage, then `make headers`, which runs the uAPI header through
#      headers_install), so each side compiles exactly the objects that include one of them and
#      relinks vmlinux. Every warning of the drop-in rebuild must also be a warning of the stock
#      rebuild (objects including none of the headers are compiled from identical inputs).
#   2. boot + upstream's selftests on the drop-in kernel (tests/upstream-selftests.sh: the
#      kernel's output compared line by line with the simulator's, which answers as 7.2.13 does).
#   3. live update between the kernels, both ways (`luo vmtest --next-kernel`): upstream's kexec
#      selftests stock -> drop-in and drop-in -> stock; the conformance suite
#      (tests/c/conformance: sessions, memfds and their data across the kexec) stock -> drop-in
#      and drop-in -> stock, and hops.c stock -> drop-in -> stock and drop-in -> stock ->
#      drop-in, each printing exactly what 7.2.13 printed when the expected files were recorded.
#      Every stage checks it runs on the image planned for it.
#   4. no console log of those runs shows an oops, BUG, WARNING or an error of the kernel's
#      LUO test FLBs (lib/tests/liveupdate.c).
# Usage:
#   [JOBS=N] [DROPIN_INCLUDE=DIR] [STOCK_KERNEL=PATH] tests/kernel/dropin.sh [OUT_DIR]
# OUT_DIR (default target/realkernel) is build.sh's: the stock tree and bzImage-7.2 there are
# built or reused, the drop-in tree goes to OUT_DIR/dropin/ and is reused too (a later run only
# recompiles what the headers reach). DROPIN_INCLUDE (default generated/include) is where the
# headers come from; STOCK_KERNEL (default: the stock build) is the stock image the live
# updates start from and return to (e.g. ../shared/realkernel/bzImage-7.2.13). The first run
# builds two kernels (about 5 minutes each on 2 idle cores); it needs make, gcc, flex, bison,
# bc, libelf-dev, qemu-system-x86 and network access to deb.debian.org. Everything it measured is in OUT_DIR/dropin/report.txt; exit 0 when every
# check passed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/target/realkernel}
INC=${DROPIN_INCLUDE:-$ROOT/generated/include}
INC=$(cd "$INC" && pwd)
JOBS=${JOBS:-$(nproc)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STOCK=$OUT/linux-source-7.2
DTOP=$OUT/dropin
DROP=$DTOP/linux-source-7.2
REPORT=$DTOP/report.txt
FAILED=0
mkdir -p "$DTOP"
: >"$REPORT"
say() { echo "$*" | tee -a "$REPORT"; }
bad() { say "FAIL: $*"; FAILED=1; }

# --- the trees --------------------------------------------------------------------------
t0=$(date +%s)
JOBS=$JOBS bash "$ROOT/tests/kernel/build.sh" "$OUT" >"$DTOP/stock-build.out" 2>"$DTOP/stock-build.log" ||
  { cat "$DTOP/stock-build.log" >&2; echo "dropin: the stock build failed (log above)" >&2; exit 1; }
say "stock kernel: $OUT/bzImage-7.2 (build.sh, $(($(date +%s) - t0)) s)"
if [ ! -f "$DROP/Makefile" ]; then
  rm -rf "$DROP"
  dpkg-deb --fsys-tarfile "$OUT"/apt/linux-source-7.2_*.deb |
    tar -xO --wildcards './usr/src/linux-source-7.2.tar.*' | tar -xJ -C "$DTOP"
fi

# Which headers are swapped: every generated KHO ABI header upstream's tree also has, and the
# uAPI header. A generated header without an upstream counterpart (ours alone) is listed.
SWAP=()
for h in "$INC"/linux/kho/abi/*.h; do
  rel=include/linux/kho/abi/$(basename "$h")
  if [ -f "$STOCK/$rel" ]; then
    SWAP+=("$h:$rel")
  else
    say "not swapped (no upstream counterpart in 7.2): $rel"
  fi
done
SWAP+=("$INC/uapi/linux/liveupdate.h:include/uapi/linux/liveupdate.h")
for s in "${SWAP[@]}"; do
  src=${s%%:*} rel=${s#*:}
  cp "$src" "$DROP/$rel"
  cmp -s "$src" "$STOCK/$rel" && bad "$rel: the generated header is byte-identical to upstream's (nothing is being tested)"
  say "swapped in: $rel <- ${src#"$ROOT"/}"
done

cp "$OUT/config-7.2" "$DROP/.config"
(cd "$DROP" && make -s olddefconfig)
cmp -s "$DROP/.config" "$STOCK/.config" || bad "the drop-in tree's .config differs from the stock tree's"

# --- 1. build, warnings compared ----------------------------------------------------------
# Brings a tree up to date (its log is kept, not compared), then rebuilds what the swapped
# headers reach, with every warning of that rebuild in LOG.
rebuild() { # TREE NAME
  local tree=$1 name=$2 t
  t=$(date +%s)
  (cd "$tree" && make -s -j"$JOBS" bzImage) >"$DTOP/$name-update.log" 2>&1 ||
    { cat "$DTOP/$name-update.log" >&2; bad "$name: make bzImage failed (log: $DTOP/$name-update.log)"; return 1; }
  local upd=$(($(date +%s) - t))
  for s in "${SWAP[@]}"; do touch "$tree/${s#*:}"; done
  : >"$DTOP/$name.stamp"
  t=$(date +%s)
  (cd "$tree" && make -s -j"$JOBS" bzImage && make -s -j"$JOBS" headers) >"$DTOP/$name-rebuild.log" 2>&1 ||
    { cat "$DTOP/$name-rebuild.log" >&2; bad "$name: rebuild failed (log: $DTOP/$name-rebuild.log)"; return 1; }
  local objs
  find "$tree" -name '*.o' -newer "$DTOP/$name.stamp" | sed "s#$tree/##" | sort >"$DTOP/$name.objects"
  objs=$(wc -l <"$DTOP/$name.objects")
  say "$name: brought up to date in $upd s; the swapped headers reach $objs objects (with vmlinux.o and the boot image's; list: $DTOP/$name.objects), rebuilt with the uAPI headers in $(($(date +%s) - t)) s"
}
# Warning lines (compiler, linker, objtool, modpost), with the tree's path taken out.
warnings() { # LOG TREE
  grep -iE 'warning' "$1" | sed -e "s#$2/##g" | sort -u || true
}
rebuild "$STOCK" stock || exit 1
if rebuild "$DROP" dropin; then
  warnings "$DTOP/stock-rebuild.log" "$STOCK" >"$DTOP/stock.warnings"
  warnings "$DTOP/dropin-rebuild.log" "$DROP" >"$DTOP/dropin.warnings"
  comm -13 "$DTOP/stock.warnings" "$DTOP/dropin.warnings" >"$DTOP/new.warnings"
  say "warnings: stock $(wc -l <"$DTOP/stock.warnings"), drop-in $(wc -l <"$DTOP/dropin.warnings"), new in the drop-in build $(wc -l <"$DTOP/new.warnings")"
  if [ -s "$DTOP/new.warnings" ]; then
    tee -a "$REPORT" <"$DTOP/new.warnings"
    bad "the drop-in build has new warnings"
  fi
  cp "$DROP/arch/x86/boot/bzImage" "$DTOP/bzImage-7.2-dropin"
else
  say "the drop-in kernel does not build: nothing to boot"
  exit 1
fi
A=${STOCK_KERNEL:-$OUT/bzImage-7.2} B=$DTOP/bzImage-7.2-dropin
A=$(realpath "$A")
say "live updates between $A (stock) and $B (drop-in)"

# --- 2. and 3. boot, selftests, live updates ----------------------------------------------
(cd "$ROOT" && cargo build -q -p luo-cli --bin luo)
LUO=$ROOT/target/debug/luo
SELF=$STOCK/tools/testing/selftests/liveupdate
RUNS=$DTOP/runs
rm -rf "$RUNS"
mkdir -p "$RUNS"
step() { # NAME COMMAND...: runs it, keeps its output, says how it went
  local name=$1 t
  shift
  t=$(date +%s)
  if "$@" >"$RUNS/$name.out" 2>&1; then
    say "ok   $name ($(($(date +%s) - t)) s): $(grep -E '^([0-9]+ differing lines|same as )' "$RUNS/$name.out" | paste -sd'|' | sed 's/|/ | /g')"
  else
    bad "$name ($(($(date +%s) - t)) s), output in $RUNS/$name.out:"
    tail -25 "$RUNS/$name.out" | tee -a "$REPORT"
  fi
}
# The output of a conformance run must be the recorded 7.2.13 output, stage by stage.
conform() { # NAME EXPECTED ARGS...
  local name=$1 want=$2
  shift 2
  "$LUO" --root "$ROOT" vmtest --keep "$RUNS/$name.work" "$@" >"$RUNS/$name.raw" || true
  grep -E '^booted:' "$RUNS/$name.raw" || true
  grep -vE '^(time|booted):' "$RUNS/$name.raw" >"$RUNS/$name.got"
  diff -u "$ROOT/tests/c/conformance/$want" "$RUNS/$name.got" &&
    echo "same as $want: $(grep -c '^== kernel stage' "$RUNS/$name.got") program runs, $(wc -l <"$RUNS/$name.got") lines"
}
C=$ROOT/tests/c/conformance
ST=$ROOT/tests/upstream-selftests.sh
step selftests-dropin bash "$ST" "$SELF" --keep "$RUNS/selftests-dropin.work" --kernel "$B"
step selftests-stock-to-dropin bash "$ST" "$SELF" --keep "$RUNS/selftests-stock-to-dropin.work" \
  --kernel "$A" --next-kernel "$B"
step selftests-dropin-to-stock bash "$ST" "$SELF" --keep "$RUNS/selftests-dropin-to-stock.work" \
  --kernel "$B" --next-kernel "$A"
step conformance-stock-to-dropin conform conformance-stock-to-dropin expected-7.2.13.txt \
  --kernel "$A" --next-kernel "$B" "$C/uapi.c" "$C/memfd.c" "$C/systemd.c"
step conformance-dropin-to-stock conform conformance-dropin-to-stock expected-7.2.13.txt \
  --kernel "$B" --next-kernel "$A" "$C/uapi.c" "$C/memfd.c" "$C/systemd.c"
step hops-stock-dropin-stock conform hops-stock-dropin-stock expected-7.2.13-hops.txt \
  --stages 3 --kernel "$A" --next-kernel "$B" --next-kernel "$A" "$C/hops.c"
step hops-dropin-stock-dropin conform hops-dropin-stock-dropin expected-7.2.13-hops.txt \
  --stages 3 --kernel "$B" --next-kernel "$A" --next-kernel "$B" "$C/hops.c"

# --- 4. console logs ----------------------------------------------------------------------
consoles=$(find "$RUNS" -name console.log | wc -l)
if [ "$consoles" = 0 ]; then
  bad "no console log was kept"
elif grep -lE 'BUG:|WARNING:|Oops|Kernel panic|Call Trace|liveupdate test: .*(ERROR|[Ff]ail)' \
  $(find "$RUNS" -name console.log) >"$RUNS/consoles.bad" 2>/dev/null; then
  bad "console logs with kernel errors: $(tr '\n' ' ' <"$RUNS/consoles.bad")"
else
  say "console logs: $consoles checked, no oops, BUG, WARNING or test-FLB error"
fi

if [ "$FAILED" = 0 ]; then
  say "drop-in check passed (report: $REPORT)"
else
  say "drop-in check FAILED (report: $REPORT)"
fi
exit "$FAILED"
