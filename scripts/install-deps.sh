#!/usr/bin/env bash
# Installs everything modelcdr needs to build, test, fuzz and benchmark, from Debian packages.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config python3-dev \
  libdeflate-dev libsodium-dev libssl-dev liblz4-dev liblzma-dev libbz2-dev zlib1g-dev nlohmann-json3-dev rapidjson-dev libcli11-dev libgtest-dev \
  clang-14 libclang-rt-14-dev libfuzzer-14-dev \
  python3-torch python3-torchvision python3-numpy python3-pytest python3-sklearn python3-joblib \
  xfsprogs e2fsprogs \
  libcpp-httplib-dev nginx-light wrk chromium \
  >/dev/null
# BLAKE3 (MTD map format 5): the packaged library where the release has one (Debian 13), else the
# official C sources inside the Rust crate's package, which CMake compiles (CMakeLists.txt).
if apt-cache show libblake3-dev >/dev/null 2>&1; then
  $SUDO apt-get install -y -qq --no-install-recommends libblake3-dev >/dev/null
else
  $SUDO apt-get install -y -qq --no-install-recommends librust-blake3-dev >/dev/null
fi
