"""The generated dvc.yaml in a temp git+DVC repo: DVC re-runs exactly what a change reaches.

- a first ``dvc repro`` runs every step, a second one runs nothing;
- correcting a homography in the registry re-runs ``warp`` and everything after it;
- replacing the teacher checkpoint in place re-runs ``teacher``/``infer`` onward;
- changing only a refine parameter re-runs ``refine`` onward (upstream markers are trusted:
  DVC decided, so nothing upstream is re-verified or re-run).

Real components: the shared YOLOX-nano teacher, classical refiner, 1-epoch students.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline import NANO, _folder, _params, needs_nano

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow
AFTER_WARP = {"warp", "refine", "student", "quality", "eval"}


def project_shell(proj: Path, timeout: int = 600):
    """``sh(*cmd) -> output`` running in ``proj`` with this venv's tools first on PATH and a git
    identity; a failing command fails the test with its output."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "OMP_NUM_THREADS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}

    def sh(*cmd: str) -> str:
        r = subprocess.run(list(cmd), cwd=proj, env=env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, (cmd, r.stdout[-3000:], r.stderr[-3000:])
        return r.stdout + r.stderr

    return sh


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


@needs_nano
def test_dvc_reruns_exactly_what_each_change_reaches(tmp_path: Path) -> None:
    if not (BIN / "dvc").exists() or not (BIN / "rgb2thermal").exists():
        pytest.skip("dvc or rgb2thermal is not installed beside this python")
    proj = tmp_path / "proj"
    _folder(proj, 8)                                   # proj/data (paired folder) + proj/registry/syn.yaml
    shutil.copytree(NANO, proj / "models", ignore=shutil.ignore_patterns("*.md", "*.yaml"))
    params = _params(proj)
    params["teacher"] = {"config": "models/yolox_nano_coco.py", "checkpoint": "models/yolox_nano_coco.pth"}
    params["data"]["roots"][0]["path"] = "data"
    params["warp"]["registry_dir"] = "registry"
    params["eval"] = {"baselines": ["source_only"]}
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    sh = project_shell(proj)
    sh(str(BIN / "rgb2thermal"), "dvc-yaml", "--params", "params.yaml")
    sh("git", "init", "-q")
    sh(str(BIN / "dvc"), "init", "-q")
    dvc_yaml = yaml.safe_load((proj / "dvc.yaml").read_text())["stages"]
    assert "registry" in dvc_yaml["warp"]["deps"] and "models/yolox_nano_coco.pth" in dvc_yaml["teacher"]["deps"]

    steps = set(dvc_yaml)
    assert _ran(sh(str(BIN / "dvc"), "repro")) == steps

    # a corrected homography: warp and everything after it
    reg = proj / "registry" / "syn.yaml"
    doc = yaml.safe_load(reg.read_text())
    doc["entries"][0]["H_rgb_to_thermal"][0][2] += 1.5             # 1.5 px more x translation
    reg.write_text(yaml.safe_dump(doc))
    assert _ran(sh(str(BIN / "dvc"), "repro")) == AFTER_WARP

    # the teacher checkpoint replaced in place (same path, other weights): teacher, infer and on
    torch = pytest.importorskip("torch")
    ck = proj / "models" / "yolox_nano_coco.pth"
    obj = torch.load(ck, map_location="cpu", weights_only=True)
    name = next(k for k, v in obj["state_dict"].items() if k.startswith("bbox_head") and v.dtype.is_floating_point)
    obj["state_dict"][name] = obj["state_dict"][name] * 0.9
    torch.save(obj, ck)
    ran = _ran(sh(str(BIN / "dvc"), "repro"))
    assert {"teacher", "infer", "eval"} <= ran and not {"data", "index"} & ran, ran

    # only a refine parameter: refine onward; the steps before it are trusted, not re-run
    params["refine"]["classical_score_threshold"] = 0.9
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    ran = _ran(sh(str(BIN / "dvc"), "repro"))
    assert "refine" in ran and not {"data", "index", "teacher", "infer", "pseudo", "warp"} & ran, ran

    # nothing changed: nothing runs
    assert _ran(sh(str(BIN / "dvc"), "repro")) == set()
    metrics = yaml.safe_load((proj / "workspace" / "stages" / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"adapted", "source_only"}


@needs_nano
@pytest.mark.usefixtures("one_torch_thread")
def test_dvc_repro_runs_the_self_training_rounds_with_the_plain_runs_outputs(tmp_path: Path) -> None:
    """Thermal source + fusion + 2 rounds through ``dvc repro``: one DVC stage per step (rounds
    included) and the same bytes as the plain run of the same parameters. Both with one torch
    thread (the DVC commands run with OMP_NUM_THREADS=1): float sums depend on the thread count
    in the last digits, and scores are written to 6 decimals."""
    if not (BIN / "dvc").exists() or not (BIN / "rgb2thermal").exists():
        pytest.skip("dvc or rgb2thermal is not installed beside this python")
    from pipeline.executor import dvc_stage_name, run_pipeline
    from pipeline.params import load_params
    from pipeline.plan import plan
    from tests.test_self_training import _rounds_params

    proj = tmp_path / "proj"
    _folder(proj, 8)
    params = _rounds_params(proj)
    params["data"]["roots"][0]["path"] = "data"
    params["warp"]["registry_dir"] = "registry"
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    sh = project_shell(proj)
    sh(str(BIN / "rgb2thermal"), "dvc-yaml", "--params", "params.yaml")
    sh("git", "init", "-q")
    sh(str(BIN / "dvc"), "init", "-q")
    p = load_params(proj / "params.yaml")
    names = {dvc_stage_name(s.name) for s in plan(p)}
    assert {"student-round2", "fuse-round2", "infer-thermal"} <= names
    assert _ran(sh(str(BIN / "dvc"), "repro")) == names
    plain = run_pipeline(p, tmp_path / "plain")
    assert plain.status == "succeeded"
    for rel in ("fuse/fused.json", "fuse@round2/fused.json", "pseudo@round2/pseudo.json", "eval/metrics.json",
                "eval/comparison.json"):
        assert (proj / "workspace" / "stages" / rel).read_bytes() == (tmp_path / "plain" / "stages" / rel).read_bytes(), rel
    assert _ran(sh(str(BIN / "dvc"), "repro")) == set()
