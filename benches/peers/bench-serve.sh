#!/usr/bin/env bash
# Usage: [SECS=10] [PEER_PYTHON=python-with-fastapi-st-hnswlib] [PEER_MODEL=hub-name-or-folder] bash benches/peers/bench-serve.sh
# Needs target/release/memex and target/release/examples/serve_load (cargo build --release --example serve_load). Never run in CI.
# serve benchmark: memex serve vs the FastAPI peer, same box, same run.
set -u
cd "$(dirname "$0")/../.."
D=/tmp/bench-serve; rm -rf $D; mkdir -p $D
M=./target/release/memex
$M --data-dir $D init --demo >/dev/null 2>&1
KEY=$($M --data-dir $D keys create --merchant MID001 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
$M --data-dir $D serve --bind 127.0.0.1:18080 --rate-limit 0 > /tmp/serve.out 2>&1 &
SP=$!
${PEER_PYTHON:-python3} benches/peers/serve_peer.py --kb-db $D/kb.db --port 18090 --model "${PEER_MODEL:-sentence-transformers/all-MiniLM-L6-v2}" > /tmp/peer.out 2>&1 &
PP=$!
for i in $(seq 1 120); do
  curl -s -o /dev/null http://127.0.0.1:18080/healthz && curl -s -o /dev/null -X POST -H 'content-type: application/json' -d '{"query":"x","k":1}' http://127.0.0.1:18090/v1/search && break
  sleep 1
done
echo "rss memex start: $(ps -o rss= -p $SP) KiB"
L=./target/release/examples/serve_load
SECS=${SECS:-10}
for route in search embeddings; do
  echo "== memex $route"; $L --url http://127.0.0.1:18080 --key "$KEY" --route $route --clients 1,8,32,64 --seconds $SECS
  echo "== peer $route"; $L --url http://127.0.0.1:18090 --key none --route $route --clients 1,8,32,64 --seconds $SECS
done
echo "rss memex end: $(ps -o rss= -p $SP) KiB"
kill $SP $PP; wait 2>/dev/null
