"""Look-Twice Feature Matching, the anomaly expert of Anomaly-OV, as perception (DESIGN.md section 4).

Modules: `expert` (the torch module), `expert_io` (save / load / the official checkpoint converter),
`checkpoints` (LLaVA-OneVision from a hub id or a folder, dtype, device map, 4/8-bit, the expert next to
it), `vision` (AnyRes preprocessing, the frozen vision tower and the expert's per-image score and map).
The LLaVA-OneVision wrapper that feeds the expert's tokens to the language model builds on these, in
`agent.mllm`. Importing this package imports no torch.
"""
