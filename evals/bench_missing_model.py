"""How long a requested model that is not there takes to fail (issue 25, item 2: under 5 seconds).

    python -m evals.bench_missing_model --out missing_model.json [--repeat 3]

Each case runs the real `looktwice` command in a fresh process (Python's start and the imports included, as a user
sees it), with empty model caches, and records the wall seconds, the exit code, the stderr lines and
how many connections "the hub" got:

- `inspect --detector winclip` (CLIP weights missing) and `ask --brain llava:<missing id>`;
- hub states: `HF_HUB_OFFLINE=1`; online with the hub refusing connections (a closed local port);
  online with a hub that accepts and never answers (the short request's timeout is the bound); and
  online with the real default endpoint (https://huggingface.co), which this machine cannot reach.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


class Hub:
    """A local endpoint that refuses (`mode="refuse"`: nothing listens) or swallows connections
    (`mode="silent"`: accepted, never answered), counting what reaches it."""

    def __init__(self, mode: str) -> None:
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._held: list[socket.socket] = []
        if mode == "refuse":
            self.sock.close()
        else:
            self.sock.listen(16)
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)  # never answered, closed at the end

    def close(self) -> None:
        for conn in self._held:
            conn.close()
        self.sock.close()


def write_case(root: Path) -> tuple[Path, Path]:
    """A plate with a scratch and two good references (the demo case's drawing)."""
    import numpy as np
    from PIL import Image

    from instruct_data.synthesis.demo_case import brushed_plate, draw_scratch

    rng = np.random.default_rng(0)
    refs = root / "refs"
    refs.mkdir(parents=True)
    for i in range(2):
        Image.fromarray((brushed_plate(rng, 128) * 255).astype("uint8")).save(refs / f"good_{i}.png")
    img, _ = draw_scratch(brushed_plate(rng, 128), rng)
    query = root / "part.png"
    Image.fromarray((img * 255).astype("uint8")).save(query)
    return query, refs


COMMANDS: dict[str, list[str]] = {
    "inspect --detector winclip": ["inspect", "{query}", "--refs", "{refs}", "--detector", "winclip", "--out", "{out}"],
    "ask --brain llava:<missing>": ["ask", "{query}", "Is there a defect?", "--refs", "{refs}",
                                    "--brain", "llava:looktwice-bench/no-such-llava", "--out", "{out}"],
}
HUBS = ("offline", "refused", "silent", "default endpoint")


def looktwice() -> str:
    """The `looktwice` command of this environment (the console script beside the interpreter)."""
    script = Path(sys.executable).with_name("looktwice")
    found = str(script) if script.is_file() else shutil.which("looktwice")
    if not found:
        raise SystemExit("bench_missing_model: no `looktwice` command here (pip install -e .)")
    return found


def run_case(command: list[str], hub_state: str, root: Path, query: Path, refs: Path) -> dict[str, Any]:
    home = root / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE", "TRANSFORMERS_OFFLINE"))}
    env.update(HOME=str(home), HF_HOME=str(home / "hf"), XDG_CACHE_HOME=str(home / "cache"),
               LOOKTWICE_MODELS_FILE=str(root / "no-models.yaml"))
    hub: Hub | None = None
    if hub_state == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    elif hub_state in ("refused", "silent"):
        hub = Hub("refuse" if hub_state == "refused" else "silent")
        env["HF_ENDPOINT"] = hub.url
    out = Path(tempfile.mkdtemp(dir=root))
    argv = [a.format(query=query, refs=refs, out=out) for a in command]
    t0 = time.perf_counter()
    done = subprocess.run([looktwice(), *argv], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    seconds = time.perf_counter() - t0
    if hub is not None:
        hub.close()
    errors = [line for line in done.stderr.splitlines() if line.startswith("looktwice: error:")]
    return {
        "seconds": round(seconds, 3),
        "exit_code": done.returncode,
        "error_lines": len(errors),
        "stderr_lines": len([line for line in done.stderr.splitlines() if line.strip()]),
        "hub_connections": hub.connections if hub is not None else None,
        "message": errors[0][:400] if errors else done.stderr.strip()[-400:],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="missing_model.json")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (the median is reported)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="looktwice-missing-") as tmp:
        root = Path(tmp)
        (root / "no-models.yaml").write_text("{}\n")
        query, refs = write_case(root / "case")
        for name, command in COMMANDS.items():
            for hub_state in HUBS:
                runs = [run_case(command, hub_state, root, query, refs) for _ in range(args.repeat)]
                row = {"command": name, "hub": hub_state, **runs[-1],
                       "seconds_median": round(statistics.median(r["seconds"] for r in runs), 3),
                       "seconds_max": max(r["seconds"] for r in runs), "runs": len(runs)}
                rows.append(row)
                print(f"{name:32s} {hub_state:17s} exit {row['exit_code']}  {row['seconds_median']:6.2f} s median "
                      f"(max {row['seconds_max']:.2f})  hub connections {row['hub_connections']}", flush=True)
    result = {"what": "a requested model that is not there: time to the usage error", "cases": rows,
              "python": sys.version.split()[0], "cores": os.cpu_count()}
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
