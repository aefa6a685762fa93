"""CLIP-based tools: WinCLIP windows, harmonic aggregation, prompt ensembles (open_clip, imported lazily).

`tools.clip.winclip` holds the compute (it imports torch); `tools.clip.prompts` the text side. Nothing
here imports open_clip at import time: the model is loaded by `tools.models.load_open_clip`.
"""
