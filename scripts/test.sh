#!/usr/bin/env bash
# The README's test command: install the test requirements (CPU torch pinned) and run the suite.
# pytest exit code 5 ("no tests collected") is a failure here, like any other non-zero code.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"
export TRITON_INTERPRET=1
python3 -m pytest -n 2 -q tests "$@"
