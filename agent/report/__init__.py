"""Batch explanation reports (`looktwice report`): a resumable SQLite store, per-image outputs, a
self-contained offline `index.html`, and `results.jsonl` / `results.csv` exports.

Modules: `inputs` (what to inspect), `store` (results.db), `files` (per-image files, written
atomically), `export` (JSONL/CSV), `html` (the page), `runner` (the loop).
"""
