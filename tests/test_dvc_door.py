"""The DVC door end to end with the committed DVC set-up (`.dvc/config`, `.dvcignore`, `.gitignore`):
a raw dataset version tracked with `dvc add` and pushed to the default local remote, `dvc repro`
vs the Prefect flow on the same parameters and data (byte-identical stage outputs), the run
record's `dvc:<md5>` dataset fingerprint, and `dvc pull` restoring the data on a "new machine".

Real components throughout (DVC and git subprocesses, the shared YOLOX-nano teacher, real
YOLOX training of the students for one epoch at 128x128, the classical refiner, pycocotools).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from core.hashing import file_sha256
from tests.test_pipeline import _folder, _params, needs_nano
from tests.test_pipeline_dvc import project_shell

pytest.importorskip("prefect")
pytest.importorskip("mmdet")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMITTED = (".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore")
STEPS = ("data", "index", "teacher", "infer", "pseudo", "warp", "refine", "student", "baseline", "quality", "eval")
# Every file under stages/*/ must be byte-identical between the two doors, except these few whose
# differences are not results (each is still compared, on the part that is a result):
#  - wall-clock fields in the markers (stage.json, attempt.json), the step reports (*.report.json) and the
#    training summary (train_result.json): compared without TIMING_KEYS;
#  - mmengine's run log, train/<start time>.py and train/<start time>/ (named after the start
#    time; it holds the log and per-iteration timings), and train/prints.log (what pycocotools
#    printed, with its timings): only their presence is compared;
#  - mmengine's own config dump train/config.py: its experiment_name holds the start time;
#    compared without that line;
#  - mmengine's full checkpoints (epoch_*.pth, best_coco_*.pth): their meta/message_hub hold the
#    start time and timings; compared by their weights (state_dict) and dataset_meta.
TIMING_KEYS = {"seconds", "finished", "timings", "started"}
MMENGINE_LOG = re.compile(r"^[a-z]+/train/(\d{8}_\d{6}(\.py$|/)|prints\.log$)")
MMENGINE_CKPT = re.compile(r"^[a-z]+/train/(epoch_\d+|best_coco_.*)\.pth$")


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by its relative path."""
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _same_content(rel: str, a: Path, b: Path) -> bool:
    """Whether the two (byte-different) files hold the same result, for the files listed above."""
    name = Path(rel).name
    if name in ("stage.json", "attempt.json", "train_result.json") or name.endswith(".report.json"):
        return _untimed(json.loads(a.read_text())) == _untimed(json.loads(b.read_text()))
    if rel.endswith("/train/config.py"):
        def strip(p: Path) -> list[str]:
            return [ln for ln in p.read_text().splitlines() if not ln.startswith("experiment_name = ")]
        return strip(a) == strip(b)
    if MMENGINE_CKPT.match(rel):
        import torch

        ca, cb = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
        sa, sb = ca["state_dict"], cb["state_dict"]
        return (sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
                and ca["meta"].get("dataset_meta") == cb["meta"].get("dataset_meta"))
    return False


def test_atomic_torch_save_is_byte_reproducible(tmp_path: Path) -> None:
    """torch.save names its zip archive after the file: through core.atomic the bytes must not
    depend on the temporary file (else every model fingerprint differs from run to run)."""
    torch = pytest.importorskip("torch")
    from core import atomic

    obj = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "meta": {"classes": ["person", "car"]}}
    (tmp_path / "direct").mkdir()
    torch.save(obj, tmp_path / "direct" / "best_slim.pth")
    outs = []
    for sub in ("a", "b"):
        with atomic.atomic_path(tmp_path / sub / "best_slim.pth") as tmp:
            torch.save(obj, tmp)
        outs.append((tmp_path / sub / "best_slim.pth").read_bytes())
        assert os.listdir(tmp_path / sub) == ["best_slim.pth"]
    assert outs[0] == outs[1]
    assert (tmp_path / "direct" / "best_slim.pth").read_bytes() == outs[0]     # as if written directly


@pytest.fixture()
def dvc_project(tmp_path: Path):
    """A git + DVC repository made of the committed DVC files, with the raw version
    ``data/raw/syn`` tracked by ``dvc add`` and pushed to the default (local) remote."""
    if not (BIN / "dvc").exists() or not (BIN / "rgb2thermal").exists():
        pytest.skip("dvc or rgb2thermal is not installed beside this python")
    missing = [f for f in COMMITTED if not (REPO / f).is_file()]
    assert not missing, f"the committed DVC set-up is incomplete: {missing}"
    proj = tmp_path / "proj"
    for rel in COMMITTED:
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, proj / rel)
    sh = project_shell(proj, timeout=300)

    def dvc(*args: str) -> str:
        return sh(str(BIN / "dvc"), *args)

    sh("git", "init", "-q")
    _folder(tmp_path, 8)                                # tmp_path/data (paired folder) + tmp_path/registry
    raw = proj / "data" / "raw" / "syn"
    raw.parent.mkdir(parents=True)
    shutil.move(tmp_path / "data", raw)
    params = _params(tmp_path)
    params["data"]["roots"] = [{"path": str(raw), "version": "syn"}]
    from pipeline.params import params_from_dict

    # every section spelled out: dvc.yaml names each one under `params:`
    (proj / "params.yaml").write_text(yaml.safe_dump(params_from_dict(params).model_dump(mode="json")))
    sh(str(BIN / "rgb2thermal"), "dvc-yaml", "--params", "params.yaml")     # the DAG, generated from the plan
    dvc("add", "data/raw/syn")
    assert (proj / "data" / "raw" / "syn.dvc").is_file()
    assert "/syn" in (proj / "data" / "raw" / ".gitignore").read_text().split()
    dvc("push")
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "dataset version syn")
    # the versioned folder itself is not in git, only its .dvc pointer
    tracked = sh("git", "ls-files").split()
    assert "data/raw/syn.dvc" in tracked and not any(t.startswith("data/raw/syn/") for t in tracked)
    return proj, raw, dvc


@needs_nano
@pytest.mark.usefixtures("quick_prefect")
def test_dvc_repro_and_flow_write_identical_outputs(dvc_project, prefect_harness) -> None:
    from flows.adapt import adapt_flow
    from pipeline.runs import list_records

    proj, raw, dvc = dvc_project
    md5 = yaml.safe_load((raw.parent / "syn.dvc").read_text())["outs"][0]["md5"]

    # the local default remote resolves relative to .dvc/ (url ../.dvc-storage -> <repo>/.dvc-storage)
    assert dvc("remote", "list").split() == ["local", str(proj / ".dvc-storage"), "(default)"]
    assert any((proj / ".dvc-storage").rglob("*.dir")), "dvc push stored nothing in the local remote"

    out = dvc("repro")
    for step in STEPS:
        assert f"Running stage '{step}'" in out, (step, out[-2000:])
    dvc_ws = proj / "workspace"
    # the DVC door's `data` step recorded the DVC-tracked version by its .dvc md5 (no re-hashing)
    dvc_data_runs = [r for r in list_records(dvc_ws) if r.flow == "dvc" and r.stage("data") is not None]
    assert dvc_data_runs and all(r.datasets == {"syn": f"dvc:{md5}"} for r in dvc_data_runs)
    # a single-step record still names the datasets and models its step depends on
    eval_run = [r for r in list_records(dvc_ws) if r.flow == "dvc" and r.stage("eval") is not None][-1]
    assert eval_run.datasets == {"syn": f"dvc:{md5}"}
    assert {"teacher", "student", "baseline"} <= set(eval_run.models) and "adapted" in eval_run.metrics["eval"]

    # The flow runs from scratch at the same workspace path (the DVC door's workspace, per-image
    # caches included, is moved aside): several outputs embed the workspace path (COCO `info`,
    # reports, mmengine files), so a different path would differ in those bytes and, through them,
    # in the stage keys after `infer`. The path is an input like the parameters.
    shutil.move(dvc_ws, proj / "ws_dvc")
    record = adapt_flow(params_path=str(proj / "params.yaml"), workspace=str(dvc_ws))
    assert record["status"] == "succeeded"
    assert [s["name"] for s in record["stages"]] == list(STEPS)
    assert not any(s["reused"] for s in record["stages"])
    assert record["datasets"] == {"syn": f"dvc:{md5}"}

    dvc_stages, flow_stages = proj / "ws_dvc" / "stages", dvc_ws / "stages"
    dvc_tree, flow_tree = _tree(dvc_stages), _tree(flow_stages)
    assert {p.split("/")[0] for p in dvc_tree} == set(STEPS)
    logs = {p for p in set(dvc_tree) | set(flow_tree) if MMENGINE_LOG.match(p)}
    assert {p.split("/")[0] for p in logs} == {"student", "baseline"}
    assert sorted(set(dvc_tree) - logs) == sorted(set(flow_tree) - logs)
    assert len(set(dvc_tree) & logs) == len(set(flow_tree) & logs)
    byte_different = sorted(p for p in set(dvc_tree) - logs if dvc_tree[p] != flow_tree[p])
    different = [p for p in byte_different if not _same_content(p, dvc_stages / p, flow_stages / p)]
    assert not different, f"outputs differ between dvc repro and the flow: {different}"
    # the comparison did compare: the trained weights and the metrics are byte-identical
    for must in ("student/train/best_slim.pth", "baseline/train/best_slim.pth", "eval/metrics.json",
                 "refine/refined.json"):
        assert must not in byte_different, must

    # another machine: no cache, no data -> `dvc pull` from the default remote restores it bit for bit
    before = _tree(raw)
    shutil.rmtree(proj / ".dvc" / "cache")
    shutil.rmtree(raw)
    dvc("pull", "data/raw/syn.dvc")
    assert _tree(raw) == before
