"""`looktwice serve`: a web chat about one image at a time.

`session` holds the logic (plain Python, no gradio); `app` builds the gradio UI on top of it and is the
only module that imports gradio (the optional `serve` extra).
"""
