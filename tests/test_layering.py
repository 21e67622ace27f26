"""The rooms stay apart: the runtime never loads the training side, and its modules import without cycles."""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "edge_birads"
SAMPLE = PACKAGE / "samples" / "cbis-P00820-left-cc-malignant.png"
HEAVY = ("convert", "tensorflow", "keras")

# Every module of the package imported, then a real `edge-birads classify` run, in one fresh interpreter.
PROBE = """
import importlib, json, pkgutil, sys
import edge_birads
names = [info.name for info in pkgutil.walk_packages(edge_birads.__path__, "edge_birads.") if info.name != "edge_birads.__main__"]
for name in names:
    importlib.import_module(name)
from edge_birads.cli import cli
try:
    cli.main(["classify", "--format", "jsonl", sys.argv[1]], prog_name="edge-birads", standalone_mode=False)
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
"""


def test_the_runtime_never_imports_the_training_side() -> None:
    run = subprocess.run([sys.executable, "-c", PROBE, str(SAMPLE)], capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert json.loads(lines[0])["group"], "classify printed its result"
    report = json.loads(lines[-1])
    assert {"edge_birads.watch.daemon", "edge_birads.dicom", "edge_birads.bench", "edge_birads.cli"} <= set(report["imported"])
    heavy = [name for name in report["modules"] if name.split(".")[0] in HEAVY]
    assert not heavy, heavy[:10]


def module_graph() -> dict[str, set[str]]:
    """edge_birads module -> the edge_birads modules it imports (at module level or inside functions)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edge_birads"):
                found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("edge_birads")}
        graph[name] = {other for other in found if other in modules and other not in (name, "edge_birads")}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as "a imports b imports ... imports a" (first module repeated at the end), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()  # each module after the modules it imports
    except graphlib.CycleError as error:
        return error.args[1][::-1]  # graphlib gives it imported before importer; reversed, it reads as "imports"
    return None


def test_no_import_cycles_in_the_runtime() -> None:
    graph = module_graph()
    assert graph["edge_birads.decode"] and graph["edge_birads.bench"], "the walk sees imports"
    cycle = import_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    found = import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert found is not None and " -> ".join(found) in ("a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"), found


FRAMEWORKS = ("tensorflow", "keras", "tf_keras")


def framework_uses(path: Path) -> list[str]:
    """Imports of the training framework in a module, and module paths of it named in strings (importlib, find_spec)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                names = [node.module] if node.module and node.level == 0 else []
            found += [name for name in names if name.split(".")[0] in FRAMEWORKS]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # a module path for importlib (not a job named "keras")
            if node.value == "tensorflow" or node.value.startswith(tuple(f"{f}." for f in FRAMEWORKS)):
                found.append(node.value)
    return found


def test_only_the_bench_baseline_uses_the_training_framework(tmp_path) -> None:
    users = {path.name for path in PACKAGE.rglob("*.py") if framework_uses(path)}
    assert users == {"bench_baseline.py"}, users
    probe = tmp_path / "probe.py"
    probe.write_text('import os\nMODULES = ("ai_edge_litert.interpreter", "tensorflow.lite")\n', encoding="utf-8")
    assert framework_uses(probe) == ["tensorflow.lite"], "the check sees a module named in a string"
