#!/usr/bin/env bash
# Runs the four starter programs in examples/ against the real model (`memex model fetch` first)
# and checks each prints what its doc comment promises. `.ci/run` calls it after the tests, so
# a starter that stops compiling or stops working fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."

# check NAME EXPECTED [ARGS...]: run the example, fail unless it succeeds and prints EXPECTED.
check() {
    local name=$1 want=$2
    shift 2
    local out
    if ! out=$(cargo run --quiet --release --locked --example "$name" -- "$@" 2>&1); then
        printf '%s\n' "$out" >&2
        echo "examples: $name failed" >&2
        exit 1
    fi
    if ! grep -qF -- "$want" <<<"$out"; then
        printf '%s\n' "$out" >&2
        echo "examples: $name did not print: $want" >&2
        exit 1
    fi
    echo "examples: $name ok"
}

check embed_search "Refunds reach the customer's card"
check kb_ask "api-keys.md" data/kb "how do I rotate my API key?"
check episodes "stored: acme 3, globex 1"
check agent_turn "model requests: 2"
