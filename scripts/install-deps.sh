#!/usr/bin/env bash
# Installs the Debian packages nibble's build, tests and demo need, skipping those present.
# Runs as root (CI, fresh containers) or through sudo.
set -euo pipefail
packages=(cmake g++ make libeigen3-dev googletest libgtest-dev libbenchmark-dev
          g++-aarch64-linux-gnu qemu-user nlohmann-json3-dev python3 python3-venv
          clang-14 libclang-rt-14-dev libopenblas-pthread-dev
          bochs bochs-term bochsbios vgabios grub-pc-bin grub-common xorriso mtools cpio file)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "nibble: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
