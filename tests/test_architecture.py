"""The layers of DESIGN.md section 1 hold: the import-linter contract is live, no import circles, and
imports built from strings obey the same layers.

The contract itself is `[tool.importlinter]` in pyproject.toml (`lint-imports` runs it in CI); these
tests read the layers from there, so there is one source of truth.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="import-linter (the dev extra) is not installed")
from importlinter.api import read_configuration  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prompts", "tools", "instruct_data", "agent", "evals")


def layers() -> list[list[str]]:
    """The `layers` contract of pyproject.toml, top layer first, each as its list of modules."""
    config = read_configuration(str(ROOT / "pyproject.toml"))
    contract = next(c for c in config["contracts_options"] if c.get("id") == "layers")
    return [[m.strip() for m in re.split(r"[:|]", line)] for line in contract["layers"]]


def layer_of(module: str, table: list[list[str]]) -> int | None:
    """Height of `module`'s layer (0 = the bottom), by its longest listed ancestor; None if unlisted."""
    best: tuple[int, int] | None = None
    for height, members in enumerate(reversed(table)):
        for m in members:
            if (module == m or module.startswith(m + ".")) and (best is None or len(m) > best[1]):
                best = (height, len(m))
    return None if best is None else best[0]


def source_modules() -> Iterator[tuple[str, Path]]:
    """(dotted name, file) of every module of the five packages."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------- the contract


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the packages under `root` with `root`'s pyproject.toml, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_contract_is_kept_and_a_reversed_import_breaks_it(tmp_path):
    """A copy of the sources passes; the same copy with a tool importing evals and the loop importing
    the command line fails, naming both (so the contract is live, and it knows core from applications)."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    kept = _lint(tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr

    for module, line in (("tools/regions.py", "import evals.metrics"), ("agent/inspection/pipeline.py", "import agent.cli")):
        path = tmp_path / module
        path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # reversed on purpose\n")
    broken = _lint(tmp_path)
    assert broken.returncode != 0
    assert "tools is not allowed to import evals" in broken.stdout, broken.stdout
    assert "agent.inspection is not allowed to import agent.cli" in broken.stdout, broken.stdout


def test_every_module_has_a_layer():
    """A new top-level module of a package outside the contract's lists would escape it (the
    `agent-split` contract makes the same demand of `agent`, exhaustively)."""
    table = layers()
    unlisted = [m for m, _ in source_modules() if m not in PACKAGES and layer_of(m, table) is None]
    assert not unlisted, f"add these to the layers of pyproject.toml: {unlisted}"


# --------------------------------------------------------------------------------------------- circles


def import_cycles(graph: grimp.ImportGraph) -> list[set[str]]:
    """Strongly connected groups of two or more modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(group)
    return found


def test_no_import_cycles():
    """No module reaches itself through imports, inside folders included.

    Imports inside functions (lazy imports) and under `TYPE_CHECKING` count: deferring an import hides a
    circle from Python's import machinery, not from the reader, and the two modules still cannot be
    understood or moved apart. A package's `__init__` counts as a module of its own.
    """
    cycles = import_cycles(grimp.build_graph(*PACKAGES, cache_dir=None))
    assert not cycles, f"import circles: {[sorted(c) for c in cycles]}"


def test_cycle_finder_sees_a_circle():
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert import_cycles(graph) == [{"p.a", "p.b"}]


# ------------------------------------------------------------------------------ imports built from strings

_TARGET = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.\w+)+(?::[\w.]*)?$")


def string_targets(source: str) -> Iterator[tuple[int, str, str]]:
    """(line, module, attribute or "") for every string literal that names one of our modules:
    `"pkg.mod"` (lazy export tables, module lists) or `"pkg.mod:Attr"` (lazy registries), also as the
    literal head of an f-string (`f"pkg.mod:{name}"`). Docstrings are prose and are skipped."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    for node in ast.walk(tree):
        text = node.value if isinstance(node, ast.Constant) and id(node) not in docstrings else None
        if isinstance(text, str) and _TARGET.match(text):
            module, _, attribute = text.partition(":")
            if module_file(module) is not None:
                yield node.lineno, module, attribute


def _defines(module: str, name: str) -> bool:
    path = module_file(module)
    assert path is not None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def upward_string_imports(table: list[list[str]]) -> tuple[list[str], set[tuple[str, str]]]:
    """(problems, every (naming module, named module) pair seen)."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for owner, path in source_modules():
        for line, target, attribute in string_targets(path.read_text(encoding="utf-8")):
            seen.add((owner, target))
            low, high = layer_of(owner, table), layer_of(target, table)
            if low is not None and high is not None and high > low:
                problems.append(f"{owner} (line {line}) names {target}, a higher layer")
            if attribute and not _defines(target, attribute.split(".")[0]):
                problems.append(f"{owner} (line {line}) names {target}:{attribute}, which does not exist")
    return problems, seen


def test_string_built_imports_obey_the_layers():
    """Lazy registries (detectors, brains, datasets), lazy export tables and the
    command-module lists import by name, which import-linter cannot see: each target named in a string
    must sit in its naming module's layer or below, and a `module:Attribute` target must exist."""
    problems, seen = upward_string_imports(layers())
    assert not problems, "\n".join(problems)
    # the scan is not vacuous: it finds one entry of each kind of table
    for pair in [
        ("agent.cli", "agent.commands.ask"),
        ("tools.detectors", "tools.detectors.ltfm"),
        ("agent.brains", "agent.brains.rule"),
        ("instruct_data.datasets", "instruct_data.datasets.mvtec"),
        ("agent.mllm", "agent.mllm.model"),
        ("agent.mllm.train", "agent.mllm.train.runner"),
    ]:
        assert pair in seen, pair


def test_string_scan_sees_a_reversed_target():
    table = layers()
    source = 'X = {"name": "agent.cli"}\nY = f"agent.inspection:{1}"\n"""agent.cli in a docstring"""\n'
    found = [(m, a) for _, m, a in string_targets(source)]
    assert found == [("agent.cli", ""), ("agent.inspection", "")]
    assert layer_of("agent.cli", table) > layer_of("evals.metrics", table) > layer_of("agent.inspection", table)
    assert layer_of("tools.detectors.ltfm", table) < layer_of("agent.mllm.model", table)


def test_architecture_md_names_only_paths_that_exist():
    """Every file or folder ARCHITECTURE.md names in backticks exists (the map stays true)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([A-Za-z_][\w/.-]*(?:\.py|\.toml|\.yaml|\.md|/))`", text))
    assert len(named) > 20, "the map should name the files it describes"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"ARCHITECTURE.md names paths that do not exist: {missing}"
