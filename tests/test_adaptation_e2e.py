"""End to end on generated data: the adapted thermal student must beat the source-only teacher.

Why: every other test checks that the pipeline runs; this one checks that it does what the product
is for. It runs ``rgb2thermal demo`` (the demo command on the default ``params.yaml``, i.e. the
pipeline's own ``data`` step generating the paired set, no ``../shared`` file, no download) made
smaller only through ``--set`` overrides (:data:`QUICK`), for two seeds (data and training). The
stated margin: :data:`MARGIN` mAP_50 on all thermal test images (per class it is not guaranteed: at
night the RGB teacher sees thermal people fairly well, so source-only is not far behind on people).
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: mAP_50 by which the adapted student must beat source-only on all thermal test images.
MARGIN = 0.10

#: The demo's parameters made small (fewer frames and epochs, a smaller input): every step of the demo runs.
SMALL = ["data.synthetic.n_pairs=96", "teacher.train.epochs=50", "teacher.train.input_size=[160,128]",
         "student.train.epochs=8", "student.train.input_size=[160,128]"]
#: ... and the classic recipe alone (no thermal source, one round): the demo's round-2 thresholds were
#: chosen for its own, stronger student 1 (measured: with this small one, round 2 collapsed on seed 0).
QUICK = [*SMALL, "thermal_source.enabled=false", "self_training.rounds=1", "eval.baselines=[source_only]"]


@pytest.mark.parametrize("seed", [0, 1])
def test_adapted_beats_source_only(tmp_path: Path, seed: int) -> None:
    pytest.importorskip("mmdet")
    from pipeline.runs import list_records
    from rgb2thermal_cli.main import main

    overrides = [*QUICK, f"data.synthetic.seed={seed}", f"teacher.train.seed={seed}", f"student.train.seed={seed}"]
    assert main(["demo", "--workspace", str(tmp_path), *[a for o in overrides for a in ("--set", o)]]) == 0
    metrics = list_records(tmp_path)[-1].eval_metrics("eval")
    gains = {c: metrics["adapted"][c]["mAP_50"] - metrics["source_only"][c]["mAP_50"] for c in ("person", "car", "all")}
    print(f"seed {seed}: adapted - source_only mAP_50 {gains}")
    assert gains["all"] >= MARGIN, (seed, gains)
