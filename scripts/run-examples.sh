#!/usr/bin/env bash
# Runs the four starter programs in examples/ against the real model (`memex model fetch` first)
# and checks each prints what its doc comment promises. `.ci/run` calls it after the tests, so
# a starter that stops compiling or stops working fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."

err=$(mktemp)
trap 'rm -f "$err"' EXIT
out=""

# run NAME [ARGS...]: the example's stdout in $out (stderr kept apart: logs never satisfy a
# check); fails when it exits non-zero or runs past 10 minutes.
run() {
    local name=$1
    shift
    if ! out=$(timeout 600 cargo run --quiet --release --locked --example "$name" -- "$@" 2>"$err"); then
        printf '%s\n' "$out" >&2
        cat "$err" >&2
        echo "examples: $name failed" >&2
        exit 1
    fi
}

# has NAME TEXT / lacks NAME TEXT: $out holds TEXT, or does not.
has() {
    if ! grep -qF -- "$2" <<<"$out"; then
        printf '%s\n' "$out" >&2
        echo "examples: $1 did not print: $2" >&2
        exit 1
    fi
}
lacks() {
    if grep -qF -- "$2" <<<"$out"; then
        printf '%s\n' "$out" >&2
        echo "examples: $1 printed what it must not: $2" >&2
        exit 1
    fi
}

run embed_search
has embed_search "Refunds reach the customer's card"
echo "examples: embed_search ok"

run kb_ask data/kb "how do I rotate my API key?"
has kb_ask "api-keys.md"
echo "examples: kb_ask ok"

run episodes
has episodes "stored: acme 3, globex 1"
lacks episodes "(no model"
# globex's recall holds its own episode and none of acme's.
globex=$(sed -n '/^globex asks/,/^$/p' <<<"$out")
out=$globex
has episodes "Settlement for globex held for KYC review."
lacks episodes "setl_9Q2"
lacks episodes "pay_77A"
lacks episodes "rotate API keys"
echo "examples: episodes ok"

run agent_turn
has agent_turn 'get_order_status({"order_id":"ord_1001"}) -> ok'
has agent_turn "answer: Order ord_1001 has shipped with BlueDart"
has agent_turn "model requests: 2"
echo "examples: agent_turn ok"
