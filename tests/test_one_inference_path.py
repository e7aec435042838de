"""One inference path: the pipeline's eval step runs a model exactly as its pseudo-labelling step
does (same boxes and scores, same test size), re-evaluating an unchanged model on unchanged frames
is all cache hits with byte-identical predictions, and an unreadable test frame is skipped and
recorded (scored as misses), not a crash.

The detector is the real mmdet YOLOX-tiny with random weights of ``tests/test_infer.py`` (a saved
checkpoint, a 128 px config test size, a few detections per frame), run at ``input_size`` 160 px
through ``thermal_source.infer``: a path that ignored the size the model is used at would give
other boxes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import thermal_gt
from core import atomic
from core.coco import load_dataset, save_dataset

pytest.importorskip("mmdet")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 4          # thermal frames of the generated data set


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """A thermal ground truth with absolute ``file_name``s, as the pipeline's index writes it."""
    root = tmp_path_factory.mktemp("synth")
    thermal_gt(root, N, 3, "thermal_test.json")
    return root


def _ctx(tmp: Path, det: tuple[Path, Path], gt: Path, cache: str):
    """A pipeline context whose ``index`` step made ``gt`` and whose ``teacher`` step is ``det``."""
    from pipeline.params import params_from_dict
    from pipeline.runs import RunRecord
    from pipeline.step import PipelineContext, StepOutput

    p = params_from_dict({"data": {"synthetic": {"n_pairs": N}},
                          "teacher": {"config": str(det[0]), "checkpoint": str(det[1])},
                          "infer": {"device": "cpu", "batch_size": 2},
                          "thermal_source": {"enabled": True, "infer": {"input_size": [160, 160]}},
                          "eval": {"batch_size": 2, "baselines": ["source_only"]}})
    model = atomic.write_json(tmp / "teacher" / "model.json", {"config": str(det[0]), "checkpoint": str(det[1]),
                                                               "checkpoint_sha256": None, "source": "user"})
    ctx = PipelineContext(params=p, workspace=tmp / "ws", record=RunRecord(run_id="t", flow="test"),
                          cache_root=tmp / cache)
    ctx.outputs["index"] = StepOutput(files={"thermal_test": gt, "thermal_adapt_images": gt})
    ctx.outputs["teacher"] = StepOutput(files={"model": model})
    return ctx


def _eval_step():
    from pipeline.step import Ref, Step

    return Step("eval", "eval", ("eval",), needs={"gt": Ref("index", "thermal_test"),
                                                  "model:source_only": Ref("teacher", "model")},
                options={"columns": ["source_only"]})


def _run(ctx, step, name: str):
    from pipeline.stages import run_kind

    out = ctx.workspace / "stages" / name
    out.mkdir(parents=True, exist_ok=True)
    return run_kind(ctx, step, out), out


def test_eval_and_pseudo_labelling_of_one_model_give_the_same_boxes(tmp_path: Path, frames: Path,
                                                                    tiny_detector) -> None:
    from pipeline.plan import plan

    gt = frames / "thermal_test.json"
    # separate caches: each path computes its detections itself (a shared cache would make them equal)
    ev_ctx, inf_ctx = _ctx(tmp_path, tiny_detector, gt, "cache_eval"), _ctx(tmp_path, tiny_detector, gt, "cache_infer")
    infer_step = next(s for s in plan(inf_ctx.params) if s.name == "infer@thermal")   # the teacher pseudo-labels thermal
    inf, inf_dir = _run(inf_ctx, infer_step, "infer@thermal")
    ev, ev_dir = _run(ev_ctx, _eval_step(), "eval")
    assert inf.cache_misses == ev.cache_misses == N and inf.cache_hits == ev.cache_hits == 0

    cats = {c["id"]: c["name"] for c in load_dataset(gt)["categories"]}
    infer_ds = load_dataset(inf_dir / "infer.json")
    names = {c["id"]: c["name"] for c in infer_ds["categories"]}
    pseudo = sorted((a["image_id"], names[a["category_id"]], tuple(a["bbox"]), a["score"])
                    for a in infer_ds["annotations"] if names[a["category_id"]] in cats.values() and a["bbox"][2] > 0
                    and a["bbox"][3] > 0)
    scored = sorted((r["image_id"], cats[r["category_id"]], tuple(r["bbox"]), r["score"])
                    for r in atomic.read_json(ev_dir / "predictions_source_only.json"))
    # eval keeps a lower score floor (COCO AP counts low scores): above the pseudo-labelling floor, exact
    # equality (boxes 1e-3 px and scores 1e-6, as cached)
    floor = inf_ctx.params.stage_params("infer", config=str(tiny_detector[0]), checkpoint=str(tiny_detector[1])).min_score
    assert floor == 0.05 and atomic.read_json(ev_dir / "infer_source_only.json.report.json")["params"]["min_score"] == 0.01
    assert len(pseudo) >= N and [r for r in scored if r[3] >= floor] == pseudo
    # the size the model was used at is the one scored at, and the table says so
    assert ev.info["test_sizes"] == {"source_only": [160, 160]}
    assert "source_only 160x160" in (ev_dir / "eval.md").read_text()


def test_re_evaluating_unchanged_models_is_all_cache_hits(tmp_path: Path, frames: Path, tiny_detector) -> None:
    ctx = _ctx(tmp_path, tiny_detector, frames / "thermal_test.json", "cache")
    first, out = _run(ctx, _eval_step(), "eval")
    before = (out / "predictions_source_only.json").read_bytes()
    again, _ = _run(ctx, _eval_step(), "eval")
    assert (first.cache_misses, first.cache_hits) == (N, 0)
    assert (again.cache_misses, again.cache_hits) == (0, N)
    assert (out / "predictions_source_only.json").read_bytes() == before
    assert again.info["metrics"]["source_only"] == first.info["metrics"]["source_only"]


def test_an_unreadable_test_frame_is_skipped_recorded_and_scored_as_misses(tmp_path: Path, frames: Path,
                                                                           tiny_detector) -> None:
    root = tmp_path / "copy"
    shutil.copytree(frames / "thermal", root / "thermal")
    gt = load_dataset(frames / "thermal_test.json")
    for im in gt["images"]:
        im["file_name"] = str(root / "thermal" / Path(im["file_name"]).name)
    bad = gt["images"][1]
    Path(bad["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    save_dataset(root / "thermal_test.json", gt)

    ev, out = _run(_ctx(tmp_path, tiny_detector, root / "thermal_test.json", "cache"), _eval_step(), "eval")
    assert (ev.cache_misses, ev.cache_hits) == (N - 1, 0)
    report = atomic.read_json(out / "infer_source_only.json.report.json")
    assert [s["image"] for s in report["skipped_images"]] == [bad["file_name"]]
    assert "decode" in report["skipped_images"][0]["reason"]
    preds = atomic.read_json(out / "predictions_source_only.json")
    assert preds and bad["id"] not in {r["image_id"] for r in preds}
    assert any("1 test frame(s) could not be read: scored as misses" in f for f in ev.info["fallbacks"])
    assert "1 frame(s) unreadable" in (out / "eval.md").read_text()
