#!/usr/bin/env bash
# Installs the official MCP TypeScript SDK the MCP tests drive memex with (tests/js/mcp_client.mjs),
# pinned, into $MEMEX_JS_CLIENTS (default target/jsclients). Idempotent. Needs node and npm
# (installed from Debian's packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${MEMEX_JS_CLIENTS:-target/jsclients}"
want="@modelcontextprotocol/sdk@1.32.2"
stamp="$dir/.memex-pins"
if [ -d "$dir/node_modules/@modelcontextprotocol/sdk" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
mkdir -p "$dir"
[ -f "$dir/package.json" ] || echo '{"name": "memex-jsclients", "private": true}' > "$dir/package.json"
npm install --prefix "$dir" --no-audit --no-fund --silent "$want"
echo "$want" > "$stamp"
