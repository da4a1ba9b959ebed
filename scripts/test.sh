#!/usr/bin/env bash
# Install everything the tests need, then run the whole test suite.
# Tests start their own servers on 127.0.0.1 (transformers serve with a tiny
# offline model, the real tritonserver from PyTriton, a fault-injecting server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --dev
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" = 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$status"
