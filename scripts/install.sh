#!/usr/bin/env bash
# Install ImageWorks backends into ./.venv (created if missing).
#   scripts/install.sh          core + the vllm, lmdeploy and triton backends (the main job)
#   scripts/install.sh --dev    everything the tests need too: test tools, the in-process
#                               transformers backend (CPU torch), the real test servers
#                               (transformers serve, PyTriton's tritonserver), exiftool and
#                               chromium (headless, for the compare report tests)
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
pip install -q -e core -e plugins/vllm -e plugins/lmdeploy -e plugins/triton
if [ "$dev" = 1 ]; then
    # torch 2.13.0 resolves to the local CPU wheel on these machines; a bare "torch" would pull CUDA.
    # Test-only servers and tools are pinned in one place (constraints/test.txt); runtime
    # dependencies of the distributions are not, so they stay as current as a user's.
    pip install -q -c constraints/test.txt "torch==2.13.0"
    pip install -q -c constraints/test.txt -e plugins/transformers -e ".[test,lint]" \
        "transformers[serving]" tokenizers nvidia-pytriton uvloop
    # the gateway's extra, and the official openai SDK its tests call it with
    pip install -q -c constraints/test.txt -e "core[serve]" openai
    if ! command -v exiftool >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            (apt-get install -y -q libimage-exiftool-perl >/dev/null 2>&1 \
                || (apt-get update -q >/dev/null && apt-get install -y -q libimage-exiftool-perl >/dev/null))
        else
            echo "exiftool is missing: sudo apt-get install libimage-exiftool-perl" >&2
        fi
    fi
    # headless Chromium renders the `imageworks compare` report in tests/test_compare_report.py
    if ! command -v chromium >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            (apt-get install -y -q chromium >/dev/null 2>&1 \
                || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null))
        else
            echo "chromium is missing (report tests): sudo apt-get install chromium" >&2
        fi
    fi
fi
echo "installed into $(pwd)/.venv: $(.venv/bin/imageworks backends | grep -c '^[a-z]') backends" >&2
