#!/usr/bin/env bash
# Install ImageWorks backends into ./.venv (created if missing).
#   scripts/install.sh          core + the vllm, lmdeploy and triton backends (the main job) and the
#                               Stable Diffusion WebUI and ComfyUI image backends (no heavy dependencies)
#   scripts/install.sh --dev    everything the tests need too: test tools, the in-process
#                               transformers backend (CPU torch), the real test servers
#                               (transformers serve, PyTriton's tritonserver), exiftool and
#                               chromium (headless, for the compare report tests), zsh and fish
set -euo pipefail
cd "$(dirname "$0")/.."

# need_apt PACKAGE COMMAND: install a Debian package when COMMAND is missing (as root), else say how
need_apt() {
    command -v "$2" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q "$1" >/dev/null 2>&1 \
            || (apt-get update -q >/dev/null && apt-get install -y -q "$1" >/dev/null)
    else
        echo "$2 is missing (tests need it): sudo apt-get install $1" >&2
    fi
}
dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
pip install -q -e core -e plugins/vllm -e plugins/lmdeploy -e plugins/triton -e plugins/sdwebui -e plugins/comfyui
if [ "$dev" = 1 ]; then
    # torch 2.13.0 resolves to the local CPU wheel on these machines; a bare "torch" would pull CUDA.
    # Test-only servers and tools are pinned in one place (constraints/test.txt); runtime
    # dependencies of the distributions are not, so they stay as current as a user's.
    pip install -q -c constraints/test.txt "torch==2.13.0"
    pip install -q -c constraints/test.txt -e plugins/transformers -e plugins/diffusers -e ".[test,lint]" \
        "transformers[serving]" tokenizers nvidia-pytriton uvloop
    # the gateway's extra, and the official openai SDK its tests call it with
    pip install -q -c constraints/test.txt -e "core[serve]" openai
    # exiftool (XMP embedding tests), headless Chromium (the `imageworks compare` report tests),
    # zsh and fish (the completion scripts are loaded by the real shells)
    need_apt libimage-exiftool-perl exiftool
    need_apt chromium chromium
    need_apt zsh zsh
    need_apt fish fish
fi
echo "installed into $(pwd)/.venv: $(.venv/bin/imageworks backends | grep -c '^[a-z]') backends" >&2
