#!/usr/bin/env bash
# Install the core and the server backends, then describe the sample images with
# the first backend that is up at its default URL (--vlm-backend auto: vllm first,
# then lmdeploy, triton, an OpenAI-compatible server at :8000, Ollama, llama.cpp's
# server, LM Studio); it says which it picked.
# Extra arguments go to `imageworks describe`, e.g. --vlm-backend lmdeploy.
# With no model server running it lists what it tried, what to start, and exits 3.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/imageworks describe samples --output samples-results.jsonl --xmp none --no-json-sidecar --vlm-backend auto "$@"
