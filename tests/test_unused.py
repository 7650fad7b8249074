"""Product code that only tests use is dead weight a reader must still understand: every public
top-level function and class of the packages is referenced by product code (issue 24 found
significance.paired_wilcoxon, kept only for its test; such helpers live in tests/).

A reference is a name or attribute in the code, a name imported, or a dotted path in a string
(the gate registry's "models.gates.topk.TopKGate", the CLI's stage modules and their `main`),
or the console script of pyproject.toml."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "models", "features", "bench")
# Modules that exist for the tests, on purpose: the plain numpy DSelect-k the gates are checked against.
TEST_REFERENCES = {"models/gates/reference.py"}


def unused_definitions(sources: dict[str, str], also: str = "") -> list[str]:
    """'file:name' of each public top-level function or class of `sources` (file -> text) that no
    source references; `also`: more text whose words count as references (pyproject.toml)."""
    used, defined = set(re.findall(r"\w+", also)), []
    for file, text in sources.items():
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.alias):
                used.add(node.name.rpartition(".")[2])
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and re.fullmatch(r"[\w.:]+", node.value)):
                used.update(re.split(r"[.:]", node.value))
        defined += [f"{file}:{node.name}" for node in tree.body
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    and not node.name.startswith("_")]
    return [d for d in defined if d.rpartition(":")[2] not in used]


def test_every_public_function_and_class_is_used_by_product_code():
    sources = {str(p.relative_to(REPO)): p.read_text(encoding="utf-8")
               for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}
    unused = [d for d in unused_definitions(sources, (REPO / "pyproject.toml").read_text())
              if d.partition(":")[0] not in TEST_REFERENCES]
    assert len(sources) > 50 and unused == []


def test_the_check_finds_a_function_only_a_docstring_names():
    sources = {"a.py": 'def used():\n    return helper()\n\n\ndef helper():\n    """Not `dead`."""\n\n\n'
                       'def dead():\n    pass\n\n\nclass Registered:\n    pass\n',
               "b.py": 'from a import used\nLAYER = "a.Registered"\nused()\n'}
    assert unused_definitions(sources) == ["a.py:dead"]
