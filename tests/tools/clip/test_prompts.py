from __future__ import annotations

import pytest

from tools.clip.prompts import PromptFileError, clean_object_name, load_prompt_set


def test_packaged_prompts_expand():
    ps = load_prompt_set()
    normal, anomalous = ps.expand("metal_nut")
    assert len(normal) == len(ps.normal_states) * len(ps.templates)
    assert len(anomalous) == len(ps.anomalous_states) * len(ps.templates)
    assert "a photo of a metal nut with defect." in anomalous
    assert "a photo of the flawless metal nut." in normal
    assert not any("{}" in s for s in normal + anomalous)


def test_clean_object_name():
    assert clean_object_name("pcb_board-2") == "pcb board 2"
    assert clean_object_name("") == clean_object_name(None) == "object"


def test_user_prompt_file_and_errors(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text('normal_states: ["good {}"]\nanomalous_states: ["bad {}"]\ntemplates: ["a {}."]\n')
    assert load_prompt_set(p).expand("cap") == (["a good cap."], ["a bad cap."])
    p.write_text('normal_states: ["good"]\nanomalous_states: ["bad {}"]\ntemplates: ["a {}."]\n')
    with pytest.raises(PromptFileError, match="exactly one"):
        load_prompt_set(p)
    p.write_text("templates: []\n")
    with pytest.raises(PromptFileError, match="normal_states"):
        load_prompt_set(p)
    with pytest.raises(PromptFileError, match="not found"):
        load_prompt_set(tmp_path / "missing.yaml")
