"""The layers point one way (core -> registration -> data -> detection -> tasks -> pipeline ->
flows -> CLI): import-linter's contracts in pyproject.toml, run here so a wrong import fails CI."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOWER = ("core", "registration", "data")
UPPER = ("tasks", "pipeline", "flows", "rgb2thermal_cli")


def test_import_linter_contracts_hold() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        exe = Path(shutil.which("lint-imports") or "")
    if not exe.is_file():
        pytest.fail("lint-imports (import-linter) is not installed: it is a dev dependency in pyproject.toml")
    r = subprocess.run([str(exe), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout and "Contracts: 2 kept" in r.stdout, r.stdout[-2000:]


def test_lower_layers_import_nothing_above_them_even_inside_functions() -> None:
    """import-linter sees function-level imports too; this second check names the offending line."""
    bad = []
    for pkg in LOWER:
        for f in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                for n in names:
                    if n.split(".")[0] in UPPER:
                        bad.append(f"{f.relative_to(REPO)}:{node.lineno} imports {n}")
    assert not bad, bad
