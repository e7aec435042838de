"""Code style that a reader can rely on (ARCHITECTURE.md, "Code style"): ``ruff check`` with the
rules and the complexity limit of ``[tool.ruff]`` in pyproject.toml, and no product function over
60 lines. Both fail the suite, as ``lint-imports`` does in tests/test_layers.py."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Product code: every package the wheel ships except benchmarks/ (measurement scripts) and tests/.
PRODUCT = ("core", "registration", "data", "detection", "tasks", "pipeline", "flows", "rgb2thermal_cli")
MAX_FUNCTION_LINES = 60


def _ruff() -> Path:
    exe = Path(sys.executable).parent / "ruff"
    if not exe.is_file():
        exe = Path(shutil.which("ruff") or "")
    if not exe.is_file():
        pytest.fail("ruff is not installed: it is a dev dependency in pyproject.toml (pinned in requirements/lock.txt)")
    return exe


def test_ruff_check_passes() -> None:
    """Style, likely bugs, complexity (C901) and docstring sections, over product, tests and benchmarks."""
    r = subprocess.run([str(_ruff()), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_ruff_enforces_the_complexity_limit() -> None:
    """The limit is real: a 13-branch function fails, a 12-branch one passes (max-complexity = 12)."""
    def source(branches: int) -> str:
        body = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(branches))
        return f"def f(x):\n{body}    return -1\n"

    def check(code: str) -> subprocess.CompletedProcess:
        # --stdin-filename inside the repo: the repository's pyproject.toml configures the check
        return subprocess.run([str(_ruff()), "check", "--no-cache", "--select", "C901", "--output-format", "concise",
                               "--stdin-filename", str(REPO / "core" / "_probe.py"), "-"],
                              cwd=REPO, input=code, capture_output=True, text=True, timeout=60)

    ok, too_complex = check(source(11)), check(source(12))      # complexity = branches + 1
    assert ok.returncode == 0, ok.stdout
    assert too_complex.returncode == 1 and "C901 `f` is too complex (13 > 12)" in too_complex.stdout, too_complex.stdout


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, length)`` of every function and method in ``path``.

    Length counts from the ``def`` line to the function's last line, docstring, comments and blank
    lines inside included, decorators excluded. A nested function counts in its own right and
    inside the function that holds it.
    """
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out.append((name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return out


def test_function_lengths_are_counted_def_to_last_line(tmp_path: Path) -> None:
    f = tmp_path / "probe.py"
    f.write_text('@decorator\n'
                 'def outer(x):\n'
                 '    """Doc."""\n'
                 '\n'
                 '    def inner():\n'
                 '        return 1\n'
                 '    return inner()\n'
                 'class C:\n'
                 '    async def m(self):\n'
                 '        pass\n')
    assert function_lengths(f) == [("outer", 2, 6), ("outer.inner", 5, 2), ("C.m", 9, 2)]


def test_no_product_function_is_over_60_lines() -> None:
    """A function a reader can hold: split longer ones into named steps."""
    long = [f"{f.relative_to(REPO)}:{line} {name} ({n} lines)"
            for pkg in PRODUCT for f in sorted((REPO / pkg).rglob("*.py"))
            for name, line, n in function_lengths(f) if n > MAX_FUNCTION_LINES]
    assert not long, f"{len(long)} product functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
