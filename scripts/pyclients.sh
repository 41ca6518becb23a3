#!/usr/bin/env bash
# Creates the small Python venv the service tests drive memex with: the official OpenAI and MCP
# SDKs, plus FastAPI and uvicorn for the outside-tool servers (tests/py/faulty_tools.py,
# examples/shop), pinned; examples/shop/requirements.txt carries the same pins. Idempotent.
# The venv lives at $MEMEX_PY_VENV (default target/pyclients); the tests find its interpreter
# at $MEMEX_TEST_PYTHON or target/pyclients/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MEMEX_PY_VENV:-target/pyclients}"
want="openai==3.57.0 mcp==2.3.0 fastapi==0.165.0 uvicorn==0.55.0"
stamp="$venv/.memex-pins"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
python3 -m venv "$venv" 2>/dev/null || {
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv "$venv"
}
# shellcheck disable=SC2086
"$venv/bin/pip" install -q --disable-pip-version-check $want
echo "$want" > "$stamp"
