"""Foundation: CLI, stack self-check, trusted checkpoint loading."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import compat
from rgb2thermal_cli.doctor_checks import run_checks

REPO = Path(__file__).resolve().parents[1]


def test_cli_help_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "rgb2thermal_cli.main", "--help"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert "rgb2thermal" in out and "doctor" in out


def test_imports_of_the_whole_stack() -> None:
    code = "import mmdet, mmcv.ops, sam2, prefect, dvc, kornia, pycocotools, cv2, optuna; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_doctor_all_ok() -> None:
    results = run_checks()
    failed = {r.name: r.detail for r in results if not r.ok}
    assert not failed, failed
    assert {r.name for r in results} == {"versions", "device", "mmcv ops", "mmdet YOLOX", "SAM2", "prefect", "dvc"}


def test_doctor_reports_failure_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import rgb2thermal_cli.doctor_checks as doctor

    def broken() -> str:
        raise RuntimeError("mmcv ops not compiled")

    monkeypatch.setattr(doctor, "CHECKS", [("mmcv ops", broken)])
    [res] = doctor.run_checks()
    assert not res.ok and "mmcv ops not compiled" in res.detail
    assert doctor.format_results([res]).startswith("FAIL")


class _Rich:
    """Stands for the non-tensor objects mmengine pickles into checkpoints (HistoryBuffer...)."""

    def __init__(self) -> None:
        self.values = [1, 2, 3]


def test_trusted_loading_is_per_call_and_rebinds_nothing(tmp_path: Path) -> None:
    """``load_trusted_checkpoint(named)`` unpickles that one file fully; ``torch.load`` itself is never
    replaced, so every other load (the same file included) keeps torch's strict default."""
    named, other = tmp_path / "named.pth", tmp_path / "other.pth"
    for p in (named, other):
        torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"hist": _Rich()}}, p)
    original = torch.load
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(named)
    assert compat.load_trusted_checkpoint(named)["meta"]["hist"].values == [1, 2, 3]
    assert torch.load is original
    for p in (other, named):
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(p)
    assert not hasattr(compat, "trusted_checkpoints")


def test_slim_checkpoint_loads_under_the_strict_default(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ckpt = run_dir / "epoch_1.pth"
    meta = {"hist": _Rich(), "dataset_meta": {"classes": ("person", "car")}}
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": meta}, ckpt)
    full = compat.load_trusted_checkpoint(ckpt)
    slim = tmp_path / "slim.pth"
    torch.save(compat.slim_checkpoint(full), slim)
    loaded = torch.load(slim)  # strict weights_only default
    assert loaded["meta"]["dataset_meta"]["classes"] == ["person", "car"]
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))
