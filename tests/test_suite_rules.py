"""Two rules of this suite, checked on its own source (docs/testing.md): tests import their helpers from tests/
modules (helpers.py, runs.py, weights.py), never from conftest.py; and every test checks something (an assert,
pytest.raises, or an assert_* helper), so none can pass merely by not raising."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _name(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")


def rule_breaks(path: Path) -> list[str]:
    """What in ``path`` breaks the two rules, one line each (file:line: what)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "conftest" or \
                isinstance(node, ast.Import) and any(a.name == "conftest" for a in node.names):
            found.append(f"{path.name}:{node.lineno}: imports from conftest (helpers live in tests/helpers.py)")
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            checks = any(isinstance(n, ast.Assert) or isinstance(n, ast.Call) and
                         (_name(n) in ("raises", "fail") or _name(n).startswith(("assert", "_assert")))
                         for n in ast.walk(node))
            if not checks:
                found.append(f"{path.name}:{node.lineno}: {node.name} asserts nothing")
    return found


def test_no_test_imports_conftest_and_every_test_asserts():
    files = sorted(TESTS.glob("*.py"))
    assert len(files) > 20 and TESTS / "helpers.py" in files
    assert [line for path in files for line in rule_breaks(path)] == []


def test_the_rules_catch_a_conftest_import_and_a_test_without_a_check(tmp_path):
    bad = tmp_path / "test_bad.py"
    bad.write_text("from conftest import ROOT\n\n\ndef test_calls_only():\n    ROOT.exists()\n\n\n"
                   "def test_raises_helper():\n    _assert_same(1, 1)\n")
    assert rule_breaks(bad) == ["test_bad.py:1: imports from conftest (helpers live in tests/helpers.py)",
                                "test_bad.py:4: test_calls_only asserts nothing"]
