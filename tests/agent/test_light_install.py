"""The light install (core dependencies, CPU-only torch, no torchvision) runs the line commands.

The real light venv is built in CI (.ci/run) and measured in BENCHMARKS.md; this test guards the same
promise in every test run: with the optional libraries made unimportable, `demo`, `inspect`, `ask`,
`chat`, `report`, `audit` and the engine of `serve` work with the embedded detector and the RuleBrain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: What the core install does not have (torchvision, the model libraries, LangChain, gradio's hub client).
NOT_IN_THE_LIGHT_INSTALL = (
    "torchvision",
    "transformers",
    "tokenizers",
    "open_clip",
    "timm",
    "huggingface_hub",
    "safetensors",
    "accelerate",
    "peft",
    "bitsandbytes",
    "sentence_transformers",
    "langchain",
    "langchain_core",
    "langgraph",
    "langchain_openai",
    "openai",
)

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    import argparse, io
    from agent.cli import main, build_parser
    case, q, refs = "demo/case", "demo/case/queries", "demo/case/references"
    scratch = q + "/plate_scratch.png"
    codes = {
        "demo": main(["demo", "--out", "demo", "--shots", "3"]),
        "inspect": main(["inspect", q, "--refs", refs, "--out", "ins", "--json"]),
        "ask": main(["ask", scratch, "Is there a defect? Where?", "--refs", refs, "--out", "ask"]),
        "report": main(["report", q, "--refs", refs, "--out", "rep", "--quiet"]),
        "audit draft": main(["audit", "draft", "--refs", refs, "--out", "spec.yaml"]),
        "audit run": main(["audit", "run", q, "--refs", refs, "--spec", "spec.yaml", "--out", "aud", "--quiet"]),
    }
    sys.stdin = io.StringIO("How big is it?\\n/quit\\n")
    codes["chat"] = main(["chat", scratch, "--refs", refs, "--out", "chat"])
    from agent.commands.serve import build_engine
    engine = build_engine(build_parser().parse_args(["serve", "--refs", refs]))
    engine.warm_up()
    codes["serve engine"] = 0
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    import json
    print("RESULT " + json.dumps({"codes": codes, "loaded": loaded}))
    """
)


def test_line_commands_run_without_the_optional_libraries(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(NOT_IN_THE_LIGHT_INSTALL)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["loaded"] == []
    assert result["codes"] == dict.fromkeys(
        ["demo", "inspect", "ask", "report", "audit draft", "audit run", "chat", "serve engine"], 0
    ), out.stderr[-3000:]
    assert (tmp_path / "rep" / "index.html").is_file() and (tmp_path / "aud" / "index.html").is_file()
