#!/usr/bin/env bash
# Run replidb's whole test suite on a fresh Debian machine: install what the
# tests need (etcd for the failover tests, promtool from `prometheus` for
# the deploy/ checks), build once, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need, installed only when missing. Installing
# `prometheus` may start its service; the tests only use its `promtool`.
packages=(etcd-server prometheus)
if ((${#packages[@]})); then
    missing=()
    for p in "${packages[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}"
    fi
fi

# Build everything first so test timing is not mixed with compilation.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast "$@"
