#!/usr/bin/env bash
# The README's test command: install the test requirements (CPU torch pinned) and run the suite.
# pytest exit code 5 ("no tests collected") is a failure here, like any other non-zero code.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"
# tests/service/test_browser.py runs the web page in headless Chromium: install Debian's package when it is
# missing (quietly; a failure only makes that test skip).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 || true
fi
export TRITON_INTERPRET=1
python3 -m pytest -n 2 -q tests "$@"
