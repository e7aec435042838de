"""Report stage: numbers on constructed label sets, Markdown/JSON/overlays, CLI, msrs-aligned-20 reach."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core import atomic, coco
from core.errors import InputError
from tasks.report import ReportInputs, ReportParams, run_report
from core.stage_report import report_path


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    """Synthetic pair set; thermal GT with absolute file names, and a damaged copy as 'warped'."""
    from data.synthetic import generate

    root = tmp_path_factory.mktemp("syn_report")
    generate(root, 6, seed=11, objects_per_image=(2, 4), progress=False)
    for mod in ("rgb", "thermal"):
        ds = coco.load_dataset(root / f"labels_{mod}" / "coco.json")
        for im in ds["images"]:
            im["file_name"] = str(root / mod / im["file_name"])
        coco.save_dataset(root / f"{mod}_gt.json", ds)
    th = coco.load_dataset(root / "thermal_gt.json")
    anns = []
    for k, a in enumerate(th["annotations"]):
        if k % 3 == 0:
            continue                                   # every third object missed
        anns.append(dict(a, score=0.8))
    x, y = 5.0, 5.0
    anns.append(coco.annotation(10_000, th["images"][0]["id"], 1, [x, y, x + 8, y + 8], score=0.3))  # a false positive
    coco.save_dataset(root / "warped.json", {**th, "annotations": anns})
    return root


def test_report_numbers_files_and_overlays(syn, tmp_path):
    th = coco.load_dataset(syn / "thermal_gt.json")
    n_gt = len(th["annotations"])
    n_missed = len(range(0, n_gt, 3))
    inp = ReportInputs(thermal_gt=syn / "thermal_gt.json", rgb_gt=syn / "rgb_gt.json", pseudo=syn / "rgb_gt.json",
                       warped=syn / "warped.json")
    out = tmp_path / "quality"
    rep = run_report(inp, out, ReportParams(n_overlays=2))
    q = atomic.read_json(out / "quality.json")
    warped = q["stages"]["warped"]["table"]["all"]["all"]
    assert warped["gt"] == n_gt and warped["tp"] == n_gt - n_missed and warped["fp"] == 1
    assert warped["recall"] == pytest.approx((n_gt - n_missed) / n_gt, abs=1e-4) and warped["mean_iou"] == 1.0
    assert q["stages"]["pseudo"]["table"]["all"]["all"]["recall"] == 1.0
    groups = set(q["stages"]["warped"]["groups"])
    assert groups <= {"day", "night", "all"} and "all" in groups
    per_group = sum(q["stages"]["warped"]["table"]["all"][g]["gt"] for g in groups - {"all"})
    assert per_group == n_gt
    md = (out / "quality.md").read_text()
    assert "## person" in md and "| warped |" in md and "## Overlays" in md
    pngs = sorted((out / "overlays").glob("*.png"))
    assert len(pngs) == 2 and rep.counts["overlays"] == 2
    import cv2

    img = cv2.imread(str(pngs[0]))
    assert img is not None and img.shape[2] == 3
    # errors are drawn in colour on a grey image: the overlay is not grey everywhere
    assert (np.abs(img[..., 0].astype(int) - img[..., 2].astype(int)) > 50).any()
    assert report_path(out).is_file() and atomic.read_json(report_path(out))["stage"] == "report"


def test_report_scores_each_source_and_the_fused_set(syn, tmp_path):
    """Extra thermal-frame label sets (a thermal source, a fused set) are scored side by side."""
    inp = ReportInputs(thermal_gt=syn / "thermal_gt.json", warped=syn / "warped.json",
                       extra=(("teacher on thermal", syn / "warped.json"), ("fused, round 1", syn / "thermal_gt.json")))
    out = tmp_path / "q"
    run_report(inp, out, ReportParams(n_overlays=0))
    q = atomic.read_json(out / "quality.json")["stages"]
    assert list(q) == ["warped", "teacher on thermal", "fused, round 1"]
    assert q["teacher on thermal"]["table"] == q["warped"]["table"]
    assert q["fused, round 1"]["table"]["all"]["all"]["recall"] == 1.0
    assert "| fused, round 1 |" in (out / "quality.md").read_text()
    with pytest.raises(InputError, match="unique"):
        ReportInputs(thermal_gt=syn / "thermal_gt.json", extra=(("warped", syn / "warped.json"),))


def test_report_inputs_are_validated(syn, tmp_path):
    with pytest.raises(InputError, match="RGB ground truth"):
        ReportInputs(thermal_gt=syn / "thermal_gt.json", pseudo=syn / "rgb_gt.json")
    with pytest.raises(InputError, match="nothing to score"):
        ReportInputs(thermal_gt=syn / "thermal_gt.json")
    with pytest.raises(InputError, match="not found"):
        ReportInputs(thermal_gt=tmp_path / "nope.json", warped=syn / "warped.json")


def test_cli_report(syn, tmp_path, capsys):
    from rgb2thermal_cli.main import main

    out = tmp_path / "rep"
    rc = main(["stage", "report", "--thermal-gt", str(syn / "thermal_gt.json"), "--warped", str(syn / "warped.json"),
               "--refined", str(syn / "warped.json"), "--out", str(out), "--overlays", "0", "--classes", "person"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "# Pseudo-label quality" in text and "## car" not in text
    assert not (out / "overlays").exists() and (out / "quality.json").is_file()


@pytest.mark.shared_data
def test_msrs20_reach(msrs20, tmp_path):
    """Real data: RGB GT as a perfect teacher reaches fewer thermal objects at night than by day."""
    from benchmarks.msrs_reach import run, to_markdown

    res = run(msrs20, tmp_path)
    t = res["quality"]["stages"]["warped"]["table"]
    assert res["gt"] == {"rgb": 53, "thermal": 113}
    assert t["all"]["all"]["gt"] == 113
    assert t["person"]["night"]["recall"] < t["person"]["day"]["recall"]
    assert t["all"]["night"]["recall"] < 0.5
    assert res["quality"]["stages"]["pseudo"]["table"]["all"]["all"]["recall"] == 1.0
    md = to_markdown(res)
    assert "| person | warped |" in md


def test_without_thermal_labels_the_report_says_so_and_scores_nothing(syn, tmp_path):
    from tasks.report import NO_THERMAL_LABELS

    th = coco.load_dataset(syn / "thermal_gt.json")
    coco.save_dataset(tmp_path / "empty_gt.json", {**th, "annotations": []})
    out = tmp_path / "quality"
    rep = run_report(ReportInputs(thermal_gt=tmp_path / "empty_gt.json", warped=syn / "warped.json"), out,
                     ReportParams(n_overlays=2))
    assert (out / "quality.md").read_text() == f"# Pseudo-label quality\n\n{NO_THERMAL_LABELS}.\n"
    assert rep.outputs == {"markdown": str(out / "quality.md")}
    assert rep.counts == {"images": 6}
    assert not (out / "quality.json").exists() and not (out / "overlays").exists()
    assert atomic.read_json(report_path(out))["outputs"] == {"markdown": str(out / "quality.md")}
