#!/usr/bin/env bash
# Install the core and the server backends, then describe the sample images with
# the configured backend (vllm on http://localhost:8000 by default). Extra
# arguments go to `imageworks describe`, e.g. --vlm-backend lmdeploy.
# With no model server running it ends with what to start, and exits 3.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/imageworks describe samples --output samples-results.jsonl --xmp none --no-json-sidecar "$@"
