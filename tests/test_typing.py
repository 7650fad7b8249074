"""Every public function and method of pipeline/ and models/ says the types it takes and returns (issue 25:
44% of arguments had hints). Public: a top-level function or class whose name has no leading underscore,
and the public methods (and __init__) of such a class; `self` and `cls` need none, nor __init__ a return."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "models")


def missing_hints(source: str) -> list[str]:
    """'name: what lacks a hint' for each public function or method of `source`."""
    found = []

    def check(function, owner: str = "") -> None:
        args = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
        if owner and args and args[0].arg in ("self", "cls"):
            args = args[1:]
        bare = [a.arg for a in args if a.annotation is None]
        bare += [f"*{a.arg}" for a in (function.args.vararg,) if a is not None and a.annotation is None]
        bare += [f"**{a.arg}" for a in (function.args.kwarg,) if a is not None and a.annotation is None]
        if function.returns is None and function.name != "__init__":
            bare.append("return")
        if bare:
            found.append(f"{owner}{function.name}: {', '.join(bare)}")

    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            check(node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for member in node.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                        not member.name.startswith("_") or member.name == "__init__"):
                    check(member, f"{node.name}.")
    return found


def test_public_functions_of_pipeline_and_models_have_type_hints():
    files = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    missing = [f"{p.relative_to(REPO)}: {m}" for p in files for m in missing_hints(p.read_text(encoding="utf-8"))]
    assert len(files) > 50 and missing == []


def test_the_check_finds_what_lacks_a_hint():
    source = ("def typed(a: int, *rest: str, b: float = 1.0, **more: bool) -> None: ...\n"
              "def untyped(a, b: int = 2): ...\n"
              "def _private(a): ...\n"
              "class Public:\n"
              "    def __init__(self, x): ...\n"
              "    def method(self, y: int): ...\n"
              "    @classmethod\n"
              "    def make(cls) -> 'Public': ...\n"
              "    def _helper(self, z): ...\n"
              "class _Private:\n"
              "    def method(self, y): ...\n")
    assert missing_hints(source) == ["untyped: a, return", "Public.__init__: x", "Public.method: return"]
