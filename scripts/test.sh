#!/usr/bin/env bash
# Run replidb's whole test suite on a fresh Debian machine: install what the
# tests need (etcd for the failover tests, promtool from `prometheus` for
# the deploy/ checks, schemathesis for the OpenAPI fuzz), build once, run
# every test, then soak the simulator (release build) over SIM_SOAK_SEEDS seeds (default 2000) with every fault,
# its multi-leader mode over ML_SOAK_SEEDS seeds (default 1000) and its
# leaderless mode over LL_SOAK_SEEDS seeds (default 1000).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need, installed only when missing. Installing
# `prometheus` may start its service; the tests only use its `promtool`.
# `redis-tools` brings redis-cli and redis-benchmark for the Redis protocol
# tests; `chromium` and `chromium-driver` the headless browser and its
# WebDriver server for the dashboard test (tests/dashboard.rs).
packages=(etcd-server prometheus redis-tools chromium chromium-driver)
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

# schemathesis fuzzes a running node from its OpenAPI document
# (crates/replidb/tests/openapi.rs), installed from PyPI only when missing
# or not the pinned version; the test fails, saying to run this script,
# without it.
SCHEMATHESIS_VERSION=4.32.5
if ! command -v st >/dev/null 2>&1 ||
    ! st --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
    # A Debian system Python refuses pip installs outside a venv (PEP 668)
    # unless told; a pyenv or venv Python takes the plain command.
    python3 -m pip install --quiet "schemathesis==${SCHEMATHESIS_VERSION}" ||
        python3 -m pip install --quiet --break-system-packages \
            "schemathesis==${SCHEMATHESIS_VERSION}"
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
    hash -r
fi
# Wherever pip put `st` (the interpreter's scripts directory, or the user
# base for a --user install), the tests find it on PATH.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(python3 -m site --user-base)/bin:$PATH"
export PATH

# Build everything first so test timing is not mixed with compilation.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast "$@"

# The documentation builds without warnings (no broken or private links),
# and, where the toolchain has them, formatting and lints are clean.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all -- --check
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi

# Simulator soaks on the release build (debug is ~10x slower): many seeds
# of the single-leader run with every fault (SIM_SOAK_SEEDS, default
# 2000; and TYPED_SOAK_SEEDS, default 300, with counters, sets and their
# deletes among the writes), then of the multi-leader run with every fault under clock skew
# (ML_SOAK_SEEDS, default 1000), then of the leaderless run — four (R, W)
# settings per seed, every fault (LL_SOAK_SEEDS, default 1000). Each soak
# runs in two halves at once to use both cores; each half prints only its
# failing seeds, and any failed seed fails the script.
cargo build --release --locked -p replidb
bin="${CARGO_TARGET_DIR:-target}/release/replidb"
status=0
soak() {
    local seeds=$1
    shift
    local half=$((seeds / 2))
    local logs
    logs=$(mktemp -d)
    "$bin" simulate --seeds "1..${half}" "$@" >"$logs/a" 2>&1 &
    local pid_a=$!
    "$bin" simulate --seeds "$((half + 1))..${seeds}" "$@" >"$logs/b" 2>&1 &
    local pid_b=$!
    wait "$pid_a" || status=1
    wait "$pid_b" || status=1
    cat "$logs/a" "$logs/b"
    rm -rf "$logs"
}
soak "${SIM_SOAK_SEEDS:-2000}" --faults all
soak "${TYPED_SOAK_SEEDS:-300}" --faults all --typed-keys
soak "${ML_SOAK_SEEDS:-1000}" --topology multi-leader --faults all
soak "${LL_SOAK_SEEDS:-1000}" --topology leaderless --faults all
if ((status != 0)); then
    echo "simulator soak: some seeds failed (each failing line shows how to replay it)" >&2
    exit 1
fi
