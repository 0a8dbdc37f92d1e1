"""The shape of modeling/: imports point one way (no cycle, not even through a function-level import), and the run
files' module reads a run without torch."""

import ast
import json
import struct
import subprocess
import sys
from pathlib import Path

MODELING = Path(__file__).resolve().parent.parent / "modeling"


def import_graph(package: Path = MODELING) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in it (top level or inside a function)."""
    names = {p.stem for p in package.glob("*.py")}
    graph = {}
    for path in sorted(package.glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level == 1 or module == "modeling" or module.startswith("modeling."):
                    module = module.removeprefix("modeling").lstrip(".")
                    if module:  # from modeling.x import y / from .x import y
                        deps.add(module.split(".")[0])
                    else:  # from modeling import x, y / from . import x
                        deps |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("modeling.")}
        graph[path.stem] = deps & names - {path.stem}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path around each cycle found by a depth-first search (empty when the graph is acyclic)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_walk_finds_a_cycle_hidden_in_a_function_level_import(tmp_path):
    (tmp_path / "run_files.py").write_text("import json\n")
    (tmp_path / "card.py").write_text("from modeling.run_files import RunFacts\n")
    (tmp_path / "report.py").write_text("from .run_files import RunFacts\n\ndef write():\n    from modeling import card\n")
    assert import_graph(tmp_path) == {"card": {"run_files"}, "report": {"card", "run_files"}, "run_files": set()}
    assert cycles(import_graph(tmp_path)) == []
    (tmp_path / "card.py").write_text("from modeling.report import _fmt_count\n")  # as card.py once did
    assert cycles(import_graph(tmp_path)) == [["card", "report", "card"]]


def test_no_import_cycle_among_modeling_modules():
    graph = import_graph()
    assert {"report", "card", "plots", "run_files", "trainer", "val_loss", "checkpoint"} <= set(graph)
    assert "report" in graph["hub"] and "run_files" in graph["card"]  # the walk sees modeling's imports
    assert cycles(graph) == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles(graph))


def test_run_files_reads_a_run_without_torch_transformers_or_accelerate(tmp_path):
    """The push, the report and the card read a run through run_files; nothing there needs the training stack."""
    checkpoint = tmp_path / "run" / "checkpoint-2"
    (checkpoint / "training_state").mkdir(parents=True)
    (checkpoint / "config.json").write_text('{"n_layer": 2}')
    header = json.dumps({"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                         "b": {"dtype": "F32", "shape": [3], "data_offsets": [24, 36]}}).encode()
    (checkpoint / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(36))
    (checkpoint / "training_state" / "run_config.json").write_text('{"config": {"run_name": "x"}}')
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n{"step": 3')
    code = f"""
import sys
for name in ("torch", "transformers", "accelerate", "numpy", "safetensors"):
    sys.modules[name] = None  # importing any of them now raises ImportError
from modeling import run_files
facts = run_files.RunFacts({str(checkpoint)!r})
assert facts.n_params == 9  # from the safetensors header
assert facts.step == 2 and [r["step"] for r in facts.records] == [1, 2] and facts.config == {{"run_name": "x"}}
assert run_files.checkpoint_step("checkpoint-19073") == 19073
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=MODELING.parent, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert "dropped a torn last line" in done.stderr
