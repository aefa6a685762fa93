"""The detector flags shared by `looktwice` commands and the `evals` scripts."""

from __future__ import annotations

import argparse

import pytest

from agent.detector_flags import add_detector_args, detector_options


def test_flags_give_the_detector_settings(tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text("blur_sigma: 2\nresolution: 320\nfalse_alarm_rate: 0.1\n", encoding="utf-8")
    p = argparse.ArgumentParser()
    add_detector_args(p)
    args = p.parse_args(
        ["--config", str(config), "--resolution", "96", "--set", "augment=[hflip]"]
    )
    assert args.detector == "auto"
    assert detector_options(args) == {
        "blur_sigma": 2,
        "resolution": 96,  # the flag wins over the file
        "augment": ["hflip"],
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        detector_options(p.parse_args(["--set", "oops"]))
    with pytest.raises(ValueError, match="does not exist"):
        detector_options(p.parse_args(["--config", str(tmp_path / "missing.yaml")]))


def test_bench_ask_takes_the_same_flags(capsys):
    from evals import bench_ask

    with pytest.raises(SystemExit) as done:
        bench_ask.main(["--help"])
    assert done.value.code == 0
    assert "--set KEY=VALUE" in capsys.readouterr().out
