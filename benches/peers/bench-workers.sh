#!/usr/bin/env bash
# Usage: [SECS=10] [CLIENTS=1,8,32] bash benches/peers/bench-workers.sh
# Needs target/release/memex and target/release/examples/serve_load
# (cargo build --release --example serve_load) and redis-server on PATH. Never run in CI.
#
# Scale-out benchmark (issue 14): search and agent-turn throughput for 1, 2 and 3 `memex serve`
# workers on this machine sharing one private Redis (state, episodic and conversation stores)
# and one published knowledge base, with a fake OpenAI-compatible model that answers at once;
# then, in the same run, one worker on the embedded SQLite state for the per-turn cost of the
# shared state.
set -u
cd "$(dirname "$0")/../.."
D=/tmp/bench-workers; rm -rf $D; mkdir -p $D
M=./target/release/memex
L=./target/release/examples/serve_load
SECS=${SECS:-10}
CLIENTS=${CLIENTS:-1,8,32}
RPORT=16391
LLM=127.0.0.1:18099
redis-server --port $RPORT --bind 127.0.0.1 --save "" --appendonly no --daemonize no > $D/redis.out 2>&1 &
RP=$!
for i in $(seq 1 50); do redis-cli -p $RPORT ping >/dev/null 2>&1 && break; sleep 0.1; done
R=redis://127.0.0.1:$RPORT
export MEMEX_KB_URL=file://$D/shared MEMEX_PAYMENTS_DB=$D/payments.db MEMEX_LLM_BASE_URL=http://$LLM/v1
export MEMEX_LLM_API_KEY=bench MEMEX_LLM_MODEL=fake MEMEX_LLM_RATE=0 MEMEX_LOG=warn
$L --fake-llm $LLM --route none > $D/llm.out 2>&1 &
LP=$!
PIDS=""
for w in 1 2 3; do
  $M --data-dir $D/w$w --episodic $R/0 --state $R/1 init --demo > /dev/null 2>&1
  $M --data-dir $D/w$w --episodic $R/0 --state $R/1 serve --bind 127.0.0.1:1808$w --worker-id w$w \
     --rate-limit 0 --max-agent-turns 64 > $D/w$w.out 2>&1 &
  PIDS="$PIDS $!"
done
KEY=$($M --data-dir $D/w1 --state $R/1 keys create --merchant MID001 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
# The SQLite-state peer: its own data dir, same Redis episodic store, same knowledge base.
$M --data-dir $D/s init --demo > /dev/null 2>&1
$M --data-dir $D/s --episodic $R/2 serve --bind 127.0.0.1:18084 --worker-id sqlite \
   --rate-limit 0 --max-agent-turns 64 > $D/s.out 2>&1 &
SP=$!
SKEY=$($M --data-dir $D/s keys create --merchant MID001 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
for p in 18081 18082 18083 18084; do
  for i in $(seq 1 120); do curl -s -o /dev/null http://127.0.0.1:$p/readyz && break; sleep 0.5; done
done
U1=http://127.0.0.1:18081; U2=$U1,http://127.0.0.1:18082; U3=$U2,http://127.0.0.1:18083
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for route in search ask; do
  for urls in $U1 $U2 $U3; do
    $L --url $urls --key "$KEY" --route $route --clients $CLIENTS --seconds $SECS
  done
done
echo "== same run, one worker, state on SQLite (episodic on Redis) vs on Redis"
$L --url http://127.0.0.1:18084 --key "$SKEY" --route ask --clients 1,8 --seconds $SECS
$L --url $U1 --key "$KEY" --route ask --clients 1,8 --seconds $SECS
echo "redis commands during the run: $(redis-cli -p $RPORT info stats | grep total_commands_processed)"
kill $PIDS $SP $LP; sleep 1; kill $RP; wait 2>/dev/null
