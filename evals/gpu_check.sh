#!/usr/bin/env bash
# One GPU check (issue 18): the GPU benchmarks BENCHMARKS.md lists as unmeasured, in under 8 minutes on
# one GPU. Writes OUT/gpu_check.json and OUT/gpu_check.md (default OUT: gpu_check/); extra arguments go
# to `python -m evals.gpu_check` (e.g. --sections winclip sam). Needs the full install (.[dev] or .[all]).
# Dry run of the same code on a CPU with tiny random models: python -m evals.gpu_check --device cpu --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check}"
shift || true
export HF_HUB_OFFLINE=1  # random weights only: nothing is downloaded
timeout --signal=INT --kill-after=20 470 python -m evals.gpu_check --device cuda --out "$OUT" --budget-s 400 "$@"
