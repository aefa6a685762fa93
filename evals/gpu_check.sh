#!/usr/bin/env bash
# One GPU check (issue 24): the GPU figures of the LLaVA path that BENCHMARKS.md lists as unmeasured, in
# under 8 minutes on one GPU. Writes OUT/gpu_check.json and OUT/gpu_check.md (default OUT: gpu_check/);
# extra arguments go to `python -m evals.gpu_check`, e.g. --model /models/anomaly-ov (a real checkpoint;
# default: random weights) or --sections ask_bf16 report. Exit 1 when a section failed or any brain call
# fell back to the rule brain. Needs the full install (.[dev] or .[all]).
# Dry run of the same code on a CPU with tiny models: python -m evals.gpu_check --device cpu --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check}"
shift || true
export HF_HUB_OFFLINE=1  # a --model is read from disk; nothing is downloaded
timeout --signal=INT --kill-after=20 470 python -m evals.gpu_check --device cuda --out "$OUT" --budget-s 400 "$@"
