#!/usr/bin/env bash
# Upstream's five LUO selftests through `luo vmtest --diff`: on the real 7.2.13 kernel and under
# the simulator, every output line compared (the "Child PID" lines print a pid and are left
# out). The selftests are not in this repository: pass the directory
# tools/testing/selftests/liveupdate of a kernel tree, e.g. of Debian's linux-source-7.2
# (see ../shared/realkernel/README.md for getting the package):
#   tests/upstream-selftests.sh /path/to/linux-source-7.2/tools/testing/selftests/liveupdate
set -euo pipefail
S=${1:?usage: $0 DIR (tools/testing/selftests/liveupdate of a kernel tree)}
S=$(cd "$S" && pwd)
[ -f "$S/luo_test_utils.c" ] || { echo "$S has no luo_test_utils.c: not the selftests directory" >&2; exit 2; }
cd "$(dirname "$0")/.."
luo() { cargo run -q -p luo-cli --bin luo -- "$@"; }
# The kexec tests: stage 1 forks a child holding the sessions, stage 2 (-s 2) verifies.
luo vmtest --diff --ignore "Child PID" \
  "$S/luo_kexec_simple.c,$S/luo_test_utils.c -s {stage}" \
  "$S/luo_multi_session.c,$S/luo_test_utils.c -s {stage}" \
  "$S/luo_stress_sessions.c,$S/luo_test_utils.c -s {stage}" \
  "$S/luo_stress_files.c,$S/luo_test_utils.c -s {stage}"
# The single-boot uAPI test (kselftest harness).
luo vmtest --diff --stages 1 "$S/liveupdate.c,$S/luo_test_utils.c"
