"""Look-Twice Feature Matching, the anomaly expert of Anomaly-OV, as perception (DESIGN.md section 4).

Modules: `expert` (the torch module), `expert_io` (save / load / the official checkpoint converter),
`checkpoints` (LLaVA-OneVision from a hub id or a folder, dtype, device map, 4/8-bit, which expert and
whether the LLM reads its tokens), `expert_marker` (the file that says the LLM was trained with the
expert), `options` (device, dtype, quant, attn: one spelling for every command), `tower` (the vision
tower alone, without reading the LLM), `vision` (AnyRes preprocessing, the frozen tower's hidden states
at the layers asked for, and the expert's per-image score and map).
The LLaVA-OneVision wrapper that feeds the expert's tokens to the language model builds on these, in
`agent.mllm`. Importing this package imports no torch.
"""
