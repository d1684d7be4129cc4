#!/usr/bin/env bash
# Upstream's five LUO selftests through `luo vmtest --diff`: on the real 7.2.13 kernel and under
# the simulator, every output line compared (the "Child PID" lines print a pid and are left
# out). The selftests are not in this repository: pass the directory
# tools/testing/selftests/liveupdate of a kernel tree, e.g. of Debian's linux-source-7.2
# (tests/kernel/build.sh fetches and unpacks it):
#   tests/upstream-selftests.sh DIR            the five, kernel and simulator compared
#   tests/upstream-selftests.sh DIR --kernel A [--next-kernel B]
#                                              the same on kernel image A; the kexec tests' second
#                                              stage on B (a live update from A to B)
#   ... --keep DIR                             keep the work files (console logs) of the kernel
#                                              runs in DIR/kexec and DIR/single
#   tests/upstream-selftests.sh DIR --repeat N `liveupdate` N times against one simulator
#                                              daemon, whose open descriptors must stay put
set -euo pipefail
S=${1:?usage: $0 DIR [--repeat N] (DIR: tools/testing/selftests/liveupdate of a kernel tree)}
S=$(cd "$S" && pwd)
[ -f "$S/luo_test_utils.c" ] || { echo "$S has no luo_test_utils.c: not the selftests directory" >&2; exit 2; }
# Image paths are taken relative to where the script was started.
KERNEL=() NEXT=() KEEP=() KEEP1=() MODE=vm
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) MODE=repeat N=${2:?--repeat N}; shift 2 ;;
    --kernel) KERNEL=(--kernel "$(realpath "${2:?--kernel PATH}")"); shift 2 ;;
    --next-kernel) NEXT=(--next-kernel "$(realpath "${2:?--next-kernel PATH}")"); shift 2 ;;
    --keep) mkdir -p "${2:?--keep DIR}"; K=$(realpath "$2")
            KEEP=(--keep "$K/kexec") KEEP1=(--keep "$K/single"); shift 2 ;;
    *) echo "unknown argument $1 (expected --repeat N, --kernel PATH, --next-kernel PATH, --keep DIR)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
cargo build -q -p luo-cli --bin luo
LUO=$PWD/target/debug/luo

if [ "$MODE" = repeat ]; then
  W=$(mktemp -d)
  trap 'kill "$DAEMON" 2>/dev/null || true; rm -rf "$W"' EXIT
  gcc -O2 -w -I generated/include/uapi -I "$S" -o "$W/liveupdate" "$S/liveupdate.c" "$S/luo_test_utils.c"
  "$LUO" sim serve --quiet --socket "$W/sim.sock" 2>"$W/daemon.log" &
  DAEMON=$!
  for _ in $(seq 50); do [ -S "$W/sim.sock" ] && break; sleep 0.1; done
  sleep 0.2
  base=$(ls "/proc/$DAEMON/fd" | wc -l)
  for i in $(seq "$N"); do
    LD_PRELOAD=$("$LUO" sim preload) LUO_SIM_SOCKET="$W/sim.sock" "$W/liveupdate" >"$W/out" 2>&1 ||
      { cat "$W/out"; echo "run $i of $N failed" >&2; exit 1; }
    sleep 0.05
    n=$(ls "/proc/$DAEMON/fd" | wc -l)
    [ "$n" = "$base" ] || { echo "run $i: the daemon holds $n descriptors, $base before" >&2; exit 1; }
  done
  echo "$N runs of liveupdate passed; the daemon's descriptors stayed at $base"
  exit 0
fi

# The kexec tests: stage 1 forks a child holding the sessions, stage 2 (-s 2) verifies.
"$LUO" vmtest --diff "${KERNEL[@]}" "${NEXT[@]}" "${KEEP[@]}" --ignore "Child PID" \
  "$S/luo_kexec_simple.c,$S/luo_test_utils.c -s {stage}" \
  "$S/luo_multi_session.c,$S/luo_test_utils.c -s {stage}" \
  "$S/luo_stress_sessions.c,$S/luo_test_utils.c -s {stage}" \
  "$S/luo_stress_files.c,$S/luo_test_utils.c -s {stage}"
# The single-boot uAPI test (kselftest harness).
"$LUO" vmtest --diff --stages 1 "${KERNEL[@]}" "${KEEP1[@]}" "$S/liveupdate.c,$S/luo_test_utils.c"
