"""dvc.yaml drives the same steps through `rgb2thermal run --stage NAME`: a first `dvc repro`
runs them, a second one skips every stage (only `data`, marked always_changed, runs and is reused)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline import _folder, _params, needs_nano

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@needs_nano
def test_dvc_repro_runs_then_skips(tmp_path: Path) -> None:
    if not (BIN / "dvc").exists() or not (BIN / "rgb2thermal").exists():
        pytest.skip("dvc or rgb2thermal is not installed beside this python")
    _folder(tmp_path, 8)
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(REPO / "dvc.yaml", proj / "dvc.yaml")
    from tasks.pipeline_params import params_from_dict

    params = params_from_dict(_params(tmp_path)).model_dump(mode="json")    # every section spelled out
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "OMP_NUM_THREADS": "1"}

    def dvc(*args: str) -> str:
        r = subprocess.run([str(BIN / "dvc"), *args], cwd=proj, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout + r.stderr

    dvc("init", "--no-scm", "-q")
    first = dvc("repro")
    assert (proj / "workspace" / "stages" / "eval" / "metrics.json").is_file()
    assert "Running stage 'eval'" in first and "Running stage 'refine'" in first
    second = dvc("repro")
    for stage in ("index", "teacher", "infer", "pseudo", "warp", "refine", "student", "baseline", "quality", "eval"):
        assert f"Running stage '{stage}'" not in second, (stage, second)
    metrics = yaml.safe_load((proj / "workspace" / "stages" / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"adapted", "source_only", "no_refinement"}
