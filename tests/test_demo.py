"""Fast checks of ``rgb2thermal demo`` (the 10-minute demo itself never runs in the test suite)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rgb2thermal_cli import demo
from core.errors import InputError
from pipeline.params import SyntheticData

REPO = Path(__file__).resolve().parents[1]


def test_demo_help_lists_options() -> None:
    out = subprocess.run([sys.executable, "-m", "rgb2thermal_cli.main", "demo", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for opt in ("--params", "--data", "--workspace", "--set", "--check"):
        assert opt in out


def test_demo_params_validate_and_point_at_data(tmp_path: Path) -> None:
    params, synthetic = demo.demo_params(demo.DEFAULT_PARAMS, tmp_path, tmp_path / "reg")
    assert params.data.synthetic is None
    assert [r.path for r in params.data.roots] == [tmp_path.resolve()]
    assert str(params.warp.registry_dir) == str((tmp_path / "reg").resolve())
    assert synthetic["n_pairs"] >= 2 and params.teacher.train is not None   # trains its own teacher: no downloads
    assert params.teacher.checkpoint is None
    # the rows the demo shows: source-only, the classic recipe, fused (round 1) and self-trained (round 2)
    assert set(params.eval.baselines) == {"source_only", "classic"}
    assert params.thermal_source.enabled and params.self_training.rounds == 2
    assert synthetic["night_hidden_people"] > 0.5   # night people mostly invisible in RGB, as on real frames


def test_demo_params_reject_bad_override(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pseudo"):
        demo.demo_params(demo.DEFAULT_PARAMS, tmp_path, tmp_path, ["pseudo.score_threshold=2.0"])


def test_demo_registry_from_generated_data(tmp_path: Path) -> None:
    from data.synthetic import default_homography, generate
    from registration.registry import lookup

    import numpy as np

    synthetic = SyntheticData(n_pairs=2, seed=1).model_dump()
    generate(tmp_path / "d", 2, seed=1, progress=False)
    assert not demo.ensure_data(tmp_path / "d", synthetic, ["person", "car"])   # present: not regenerated
    reg = demo.write_registry(tmp_path / "d", tmp_path / "reg", "synthetic")
    entry = lookup(reg, "synthetic", (320, 256))
    np.testing.assert_allclose(entry.H, default_homography(), rtol=1e-6)


def test_demo_regenerates_data_from_other_parameters_and_spares_other_folders(tmp_path: Path, caplog) -> None:
    """A kept folder made with other parameters (e.g. an older generator) is regenerated, never reused."""
    import logging

    from data.synthetic import SCHEMA, generate, is_generated

    old = generate(tmp_path / "d", 3, seed=1, night_hidden_people=0.5, progress=False)
    synthetic = SyntheticData(n_pairs=3, seed=1).model_dump()
    assert not is_generated(old.out_dir, 3, seed=1)
    with caplog.at_level(logging.WARNING):
        assert demo.ensure_data(old.out_dir, synthetic, ["person", "car"])
    assert "regenerating" in caplog.text
    assert is_generated(old.out_dir, 3, seed=1)
    assert (old.out_dir / "homography.json").read_text().count(SCHEMA) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["d"]   # no temporary folder left
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("not a synthetic set")
    with pytest.raises(InputError, match="other than a generated synthetic set"):
        demo.ensure_data(other, synthetic, ["person", "car"])
    assert (other / "notes.txt").read_text() == "not a synthetic set"


def test_format_summary_gain_and_missing() -> None:
    metrics = {"source_only": {"person": {"mAP_50": 0.2}, "car": {"mAP_50": 0.4}, "all": {"mAP_50": 0.3}},
               "classic": {"person": {"mAP_50": 0.3}, "car": {"mAP_50": -1.0}, "all": {"mAP_50": 0.35}},
               "adapted": {"person": {"mAP_50": 0.5}, "car": {"mAP_50": 0.45}, "all": {"mAP_50": 0.475}},
               "oracle": {"person": {"mAP_50": 0.9}, "car": {"mAP_50": 0.8}, "all": {"mAP_50": 0.85}}}
    table = demo.format_summary(metrics, ["person", "car"], "classical", describe={"adapted": "round 2: fused"})
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| source_only", "| classic", "| adapted: round 2: fused", "| oracle"]
    assert "| source_only | 0.200 | 0.400 | 0.300 | — |" in table
    assert "| classic | 0.300 | — | 0.350 | +0.050 |" in table
    assert "| adapted: round 2: fused | 0.500 | 0.450 | 0.475 | +0.175 |" in table
    assert "Refinement: classical" in table


@pytest.mark.slow
def test_demo_writes_the_parameters_it_ran_and_the_other_doors_reuse_every_step(tmp_path: Path,
                                                                                  prefect_harness) -> None:
    """A tiny demo run, then the Prefect flow and the plain run on its ``params.run.yaml``: every step reused."""
    pytest.importorskip("mmdet")
    from flows.adapt import adapt_flow
    from pipeline.executor import run_pipeline
    from pipeline.params import load_params
    from rgb2thermal_cli.main import main

    import yaml

    from tests.test_pipeline import NANO, TRAIN

    if not (NANO / "yolox_nano_coco.pth").is_file():
        pytest.skip(f"shared YOLOX-nano teacher absent at {NANO}")
    params = yaml.safe_load(demo.DEFAULT_PARAMS.read_text())
    params["data"]["synthetic"].update(n_pairs=8, rgb_size=[160, 128], thermal_size=[128, 96])
    params["teacher"] = {"config": str(NANO / "yolox_nano_coco.py"), "checkpoint": str(NANO / "yolox_nano_coco.pth")}
    params["infer"].update(device="cpu", min_score=0.01)
    params["pseudo"].update(score_threshold=0.02, max_per_image=5)
    params["student"]["train"] = {**TRAIN, "freeze_bn": True, "frozen_stages": 0}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(params))
    ws = tmp_path / "ws"
    assert main(["demo", "--params", str(tmp_path / "demo.yaml"), "--data", str(tmp_path / "sample"),
                 "--workspace", str(ws)]) == 0
    ran = ws / "params.run.yaml"
    assert ran.is_file()
    record = adapt_flow(params_path=str(ran), workspace=str(ws))
    assert record["status"] == "succeeded" and all(s["reused"] for s in record["stages"]), \
        [s["name"] for s in record["stages"] if not s["reused"]]
    plain = run_pipeline(load_params(ran), ws)
    assert all(s.reused for s in plain.stages)
