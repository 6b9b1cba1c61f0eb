#!/usr/bin/env bash
# Makes sure the build prerequisites exist: a C/C++ compiler and clang + libclang-dev (the
# rocksdb crate compiles RocksDB from source and runs bindgen). Installs what is missing.
set -euo pipefail

missing=()
for pkg in clang libclang-dev g++ make pkg-config; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-build-deps: installing ${missing[*]} (apt)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "ensure-build-deps: cargo is not on PATH; install Rust (rustup) first" >&2
  exit 1
fi
