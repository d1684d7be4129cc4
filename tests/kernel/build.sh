#!/usr/bin/env bash
# Builds the LUO kernel `luo vmtest` boots, as ../shared/realkernel/bzImage-7.2.13 was built:
# Debian's linux-source-7.2 (the unstable suite, through a private apt list: nothing is added to
# the machine's sources), `make tinyconfig`, this directory's fragment.config merged, `make
# olddefconfig`, `make bzImage` (about 5 minutes on 2 cores; needs make, gcc, flex, bison, bc,
# libelf-dev).
#   [JOBS=N] tests/kernel/build.sh [OUT_DIR] [--config-only]
# then: luo vmtest --kernel OUT_DIR/bzImage-7.2 ...
set -euo pipefail
OUT=${1:-target/realkernel}
ONLY=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/apt/lists/partial"
OUT=$(cd "$OUT" && pwd)
APT="$OUT/apt"
printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian unstable main\n' \
  > "$APT/sources.list"
aptp=(-o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o Dir::State::Lists="$APT/lists" -o Debug::NoLocking=1)
if ! ls "$APT"/linux-source-7.2_*.deb >/dev/null 2>&1; then
  apt-get "${aptp[@]}" update -qq
  (cd "$APT" && apt-get "${aptp[@]}" download linux-source-7.2)
fi
if [ ! -d "$OUT/linux-source-7.2" ]; then
  dpkg-deb --fsys-tarfile "$APT"/linux-source-7.2_*.deb |
    tar -xO --wildcards './usr/src/linux-source-7.2.tar.*' | tar -xJ -C "$OUT"
fi
cd "$OUT/linux-source-7.2"
make -s tinyconfig
scripts/kconfig/merge_config.sh -m .config "$HERE/fragment.config" >/dev/null
make -s olddefconfig
cp .config "$OUT/config-7.2"
if [ "$ONLY" = "--config-only" ]; then
  echo "config: $OUT/config-7.2"
  exit 0
fi
make -s -j"${JOBS:-$(nproc)}" bzImage
cp arch/x86/boot/bzImage "$OUT/bzImage-7.2"
echo "kernel: $OUT/bzImage-7.2 (luo vmtest --kernel $OUT/bzImage-7.2 ...)"
