"""``rgb2thermal demo`` (``make demo``): its parameters, its computed conclusion, and — slow — its own
path (the demo command on the default ``params.yaml``, made cheaper only by ``--set`` overrides of the
same parameters) with the other doors reusing every step it ran."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import InputError
from rgb2thermal_cli import demo
from tests.test_adaptation_e2e import SMALL

REPO = Path(__file__).resolve().parents[1]

#: The demo's own parameters, smaller (fewer frames and epochs, a smaller input): every step runs.
CHEAP = SMALL


def test_demo_help_lists_options() -> None:
    out = subprocess.run([sys.executable, "-m", "rgb2thermal_cli.main", "demo", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for opt in ("--params", "--workspace", "--set", "--threads", "--check"):
        assert opt in out
    assert "--data " not in out          # the pipeline's data step makes the data: no folder of its own


def test_demo_params_are_the_pipelines_with_generated_data() -> None:
    params = demo.demo_params(demo.DEFAULT_PARAMS)
    s = params.data.synthetic
    assert s is not None and not params.data.roots        # the pipeline's data step generates it
    assert (s.n_pairs, s.seed, s.night_hidden_people) == (240, 0, 1.0)
    assert params.teacher.train is not None and params.teacher.checkpoint is None   # no downloads
    assert params.teacher.train.deterministic is True and params.student.train.deterministic is True
    assert params.warp.registry_dir is None        # the data step's registry: the exact homography
    assert set(params.eval.baselines) == {"source_only", "classic"}
    assert params.thermal_source.enabled and params.self_training.rounds == 2


def test_demo_params_reject_bad_override_and_foreign_data(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pseudo"):
        demo.demo_params(demo.DEFAULT_PARAMS, ["pseudo.score_threshold=2.0"])
    (tmp_path / "pairs").mkdir()
    with pytest.raises(InputError, match="data.synthetic"):
        demo.demo_params(demo.DEFAULT_PARAMS,
                         ["data.synthetic=null", f"data.roots=[{{path: {tmp_path / 'pairs'}, version: mine}}]"])


def test_demo_check_validates_without_running(tmp_path: Path, capsys) -> None:
    from rgb2thermal_cli.main import main

    assert main(["demo", "--check", "--workspace", str(tmp_path / "ws")]) == 0
    assert "demo parameters OK" in capsys.readouterr().out
    assert not (tmp_path / "ws").exists()



def test_deterministic_training_is_honoured_on_cpu_and_dropped_loudly_on_cuda(caplog) -> None:
    """The demo's ``deterministic: true`` (TrainSpec) reaches mmengine's randomness on CPU; on CUDA it is
    dropped with a WARNING (untested kernels there), never silently."""
    import logging

    from detection.train_config import _deterministic

    assert _deterministic(True, "cpu") is True and _deterministic(False, "cpu") is False
    with caplog.at_level(logging.WARNING):
        assert _deterministic(True, "cuda:0") is False
    assert "only supported on CPU" in caplog.text

METRICS = {"source_only": {"person": {"mAP_50": 0.2}, "car": {"mAP_50": 0.4}, "all": {"mAP_50": 0.3}},
           "classic": {"person": {"mAP_50": 0.3}, "car": {"mAP_50": -1.0}, "all": {"mAP_50": 0.35}},
           "adapted": {"person": {"mAP_50": 0.5}, "car": {"mAP_50": 0.45}, "all": {"mAP_50": 0.475}},
           "oracle": {"person": {"mAP_50": 0.9}, "car": {"mAP_50": 0.8}, "all": {"mAP_50": 0.85}}}


def test_format_summary_gain_and_missing() -> None:
    table = demo.format_summary(METRICS, ["person", "car"], "classical", describe={"adapted": "round 2: fused"})
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| source_only", "| classic", "| adapted: round 2: fused", "| oracle"]
    assert "| source_only | 0.200 | 0.400 | 0.300 | — |" in table
    assert "| classic | 0.300 | — | 0.350 | +0.050 |" in table
    assert "| adapted: round 2: fused | 0.500 | 0.450 | 0.475 | +0.175 |" in table
    assert "Refinement: classical" in table


def test_conclusion_is_computed_from_the_table() -> None:
    night = {run: {"night": {"person": {"mAP_50": v}, "car": {"mAP_50": -1.0}}}
             for run, v in (("source_only", 0.1), ("classic", 0.2), ("adapted", 0.6))}
    margins = demo.conclusion_margins(METRICS, night, ["person", "car"])
    assert margins == {
        "source_only": {"all": 0.175, "person": 0.3, "car": 0.05, "night person": 0.5, "night car": None},
        "classic": {"all": 0.125, "person": 0.2, "car": None, "night person": 0.4, "night car": None}}
    line = demo.conclusion_line(margins, noise=0.05)
    assert line.endswith("the adapted model beats source_only (+0.175 all; person +0.300, car +0.050, night person "
                         "+0.500, night car —); it beats classic (+0.125 all; person +0.200, car —, night person "
                         "+0.400, night car —).")
    assert "a margin under 0.05" in line
    assert demo.conclusion_line({"classic": {"all": 0.049}}, noise=0.05).endswith("ties classic (+0.049 all; ).")
    assert "falls below classic (-0.050 all" in demo.conclusion_line({"classic": {"all": -0.05}}, noise=0.05)
    assert demo.conclusion_margins({"source_only": METRICS["source_only"]}, None, ["person"]) == {}


@pytest.mark.slow
def test_make_demo_path_writes_its_parameters_and_the_other_doors_reuse_every_step(tmp_path: Path, capsys,
                                                                                    prefect_harness) -> None:
    """The demo command on the default params.yaml (cheaper through --set only), then the Prefect flow
    and the plain run on its ``params.run.yaml``: every step reused. No ``../shared`` file is read."""
    pytest.importorskip("mmdet")
    from flows.adapt import adapt_flow
    from pipeline.executor import run_pipeline
    from pipeline.params import load_params
    from pipeline.runs import list_records
    from rgb2thermal_cli.main import main

    ws = tmp_path / "ws"
    argv = ["demo", "--workspace", str(ws), "--threads", "1"]
    assert main(argv + [a for o in CHEAP for a in ("--set", o)]) == 0
    out = capsys.readouterr().out
    ran = ws / "params.run.yaml"
    params = load_params(ran)
    assert params == demo.demo_params(demo.DEFAULT_PARAMS, CHEAP)      # exactly what it ran
    assert params.data.synthetic is not None and (ws / "stages" / "data" / "synthetic" / "split.csv").is_file()
    record = list_records(ws)[-1]
    metrics = record.eval_metrics("eval")
    assert {"source_only", "classic", "round1", "adapted"} <= set(metrics)
    expected = demo.conclusion_line(demo.conclusion_margins(metrics, demo._grouped(record, ws), ["person", "car"]))
    assert expected in out.splitlines()
    flow = adapt_flow(params_path=str(ran), workspace=str(ws))
    assert flow["status"] == "succeeded" and all(s["reused"] for s in flow["stages"]), \
        [s["name"] for s in flow["stages"] if not s["reused"]]
    assert all(s.reused for s in run_pipeline(load_params(ran), ws).stages)
