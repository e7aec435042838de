"""The labelling loop: ``label pick`` (uncertain thermal adapt frames -> a CVAT / Label Studio task) and
``label import`` (corrected labels -> a labelled val split, or training labels that win)."""
from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from core.boxes import xywh_to_xyxy
from core.coco import categories_from_names, load_dataset, new_dataset, save_dataset
from core.errors import InputError
from tasks.label_pick import PickParams, agreement, pick_frames

CLASSES = ["person", "car"]


def _flat(_cls: str, _daynight: str | None) -> float:
    return 0.5


def _im(i: int, split: str = "adapt", daynight: str | None = "day") -> dict:
    return {"id": i, "file_name": f"t/{i:03d}.png", "width": 100, "height": 80, "split": split, "daynight": daynight}


def _ds(images: list[dict], boxes: dict[int, list[tuple[int, list[float], float]]]) -> dict:
    anns = [{"id": k, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0, "score": s}
            for k, (i, c, b, s) in enumerate(((i, c, b, s) for i, bs in sorted(boxes.items()) for c, b, s in bs), 1)]
    return new_dataset(images, anns, categories_from_names(CLASSES))


# ---------------------------------------------------------------------------------------------
# pick
# ---------------------------------------------------------------------------------------------
def test_agreement_is_one_for_equal_sets_zero_against_nothing_and_the_mean_best_iou_between() -> None:
    a = [("person", np.array([0.0, 0, 10, 10]))]
    half = [("person", np.array([0.0, 0, 10, 5]))]          # IoU with a: 50 / 100
    assert agreement(a, a) == 1.0 and agreement([], []) == 1.0
    assert agreement(a, []) == 0.0 and agreement([], a) == 0.0
    assert agreement(a, half) == pytest.approx(0.5, abs=1e-12)
    assert agreement(a, [("car", np.array([0.0, 0, 10, 10]))]) == 0.0     # same place, other class: no match


def _pick_case() -> tuple[dict, dict, list[dict]]:
    """Frames 1-8 adapt (1-4 day, 5-8 night), 9 test, 10 val. RGB and thermal disagree on 2, 3, 6 (and on
    the test and val frames, which must never be picked), agree elsewhere."""
    images = [_im(i, daynight="day" if i <= 4 else "night") for i in range(1, 9)] + [_im(9, "test"), _im(10, "val")]
    box, other = [10.0, 10, 20, 20], [60.0, 40, 20, 20]
    rgb = _ds(images, {i: [(1, box, 0.9)] for i in range(1, 11)})
    thermal = _ds(images, {i: [(1, other if i in (2, 3, 6, 9, 10) else box, 0.9)] for i in range(1, 11)})
    fused = _ds(images, {i: [(1, box, 0.9)] for i in range(1, 11)})
    return fused, {"rgb": rgb, "thermal": thermal}, images


def test_pick_is_deterministic_for_a_seed_balanced_and_never_takes_test_or_val_frames() -> None:
    fused, sources, images = _pick_case()
    pool = [im for im in images if im["split"] == "adapt"]
    params = PickParams(n=4, seed=0, weights={"disagreement": 1.0, "near_threshold": 0.0, "rare_class": 0.0})
    first = pick_frames(fused, sources, pool, _flat, params)
    assert [p.image_id for p in first] == [p.image_id for p in pick_frames(fused, sources, pool, _flat, params)]
    ids = [p.image_id for p in first]
    # the three disagreeing frames first; day/night balanced (2 + 2): one agreeing night frame fills up
    assert set(ids[:3]) == {2, 3, 6} and ids[3] in (5, 7, 8)
    assert sorted(p.daynight for p in first) == ["day", "day", "night", "night"]
    assert first[0].reasons == {"disagreement": 1.0, "near_threshold": 0.0, "rare_class": 1.0}
    # all frames, a large n: the test (9) and val (10) frames are never in it, though they disagree most
    every = pick_frames(fused, sources, pool, _flat, params.replace(n=50))
    assert sorted(p.image_id for p in every) == list(range(1, 9))
    # another seed changes only the order among ties: the same three disagreeing frames lead
    other = [p.image_id for p in pick_frames(fused, sources, pool, _flat, params.replace(seed=1))]
    assert set(other[:3]) == {2, 3, 6} and other[3] in (5, 7, 8)
    ties = {tuple(p.image_id for p in pick_frames(fused, sources, pool, _flat, params.replace(seed=s))[3:])
            for s in range(6)}
    assert len(ties) > 1                                        # the seed decides the tie


def test_a_val_pick_is_the_seeded_draw_whatever_the_scores_balanced_and_never_test_or_val() -> None:
    """``purpose: val``: the frames the seed's permutation puts first in each day/night group, whatever
    their uncertainty (a yardstick must look like the data, not be its hardest frames)."""
    fused, sources, images = _pick_case()
    pool = [im for im in images if im["split"] == "adapt"]
    params = PickParams(n=4, seed=0, purpose="val")
    got = pick_frames(fused, sources, pool, _flat, params)
    rank = dict(zip(range(1, 9), np.random.default_rng(0).permutation(8).tolist(), strict=True))
    want = sorted(range(1, 5), key=rank.get)[:2] + sorted(range(5, 9), key=rank.get)[:2]
    assert [p.image_id for p in got] == sorted(want, key=rank.get)
    assert sorted(p.daynight for p in got) == ["day", "day", "night", "night"]
    # the same draw when every frame agrees (no score at all), and the reasons still go to the export
    agree = {"rgb": sources["rgb"], "thermal": sources["rgb"]}
    assert [p.image_id for p in pick_frames(fused, agree, pool, _flat, params)] == [p.image_id for p in got]
    assert {p.image_id: p.reasons["disagreement"] for p in got} == {i: float(i in (2, 3, 6)) for i in want}
    # a training pick of the same seed leads with the three disagreeing frames instead (frame 2 is not drawn)
    assert {p.image_id for p in pick_frames(fused, sources, pool, _flat, params.replace(purpose="training"))[:3]} \
        == {2, 3, 6} and 2 not in want
    # test (9) and val (10) are never drawn either
    every = pick_frames(fused, sources, pool, _flat, params.replace(n=50))
    assert sorted(p.image_id for p in every) == list(range(1, 9))


def test_pick_scores_near_threshold_and_rare_classes() -> None:
    images = [_im(i) for i in range(1, 4)]
    labels = _ds(images, {1: [(1, [0.0, 0, 5, 5], 0.55)], 2: [(1, [0.0, 0, 5, 5], 0.95)], 3: [(2, [0.0, 0, 5, 5], 0.95)]})
    params = PickParams(n=3, balance_daynight=False, band=0.1)
    got = {p.image_id: p.reasons for p in pick_frames(labels, {"fused": labels}, images, _flat, params)}
    assert got[1]["near_threshold"] == 1.0 and got[2]["near_threshold"] == 0.0     # |0.55 - 0.5| <= 0.1
    assert got[3]["rare_class"] == 1.0 and got[1]["rare_class"] == 0.5             # car 1 box, person 2


def test_pick_counts_boxes_so_a_frame_with_more_doubtful_boxes_goes_first() -> None:
    """Frame 1: one car the thermal source lacks (every box in doubt: 0.5 disagreeing boxes). Frame 2: four
    people, two of them missed by the thermal source (a third of its boxes in doubt: 1.0 disagreeing boxes).
    As a share of the frame's boxes frame 1 would lead; a person labelling frame 2 corrects twice as much."""
    images = [_im(1), _im(2)]
    people = [(1, [10.0 * k, 0, 8, 8], 0.9) for k in range(4)]
    rgb = _ds(images, {1: [(2, [0.0, 0, 20, 10], 0.9)], 2: people})
    thermal = _ds(images, {2: people[:2]})
    params = PickParams(n=1, balance_daynight=False, weights={"disagreement": 1.0, "near_threshold": 0.0, "rare_class": 0.0})
    (first,) = pick_frames(rgb, {"rgb": rgb, "thermal": thermal}, images, _flat, params)
    assert first.image_id == 2 and first.reasons["disagreement"] == pytest.approx(1.0, abs=1e-6)
    both = {p.image_id: p.reasons["disagreement"] for p in pick_frames(rgb, {"rgb": rgb, "thermal": thermal}, images,
                                                                          _flat, params.replace(n=2))}
    assert both == {2: pytest.approx(1.0, abs=1e-6), 1: 0.5}


# ---------------------------------------------------------------------------------------------
# a real folder dataset (generated), its index, a fused label set, the export
# ---------------------------------------------------------------------------------------------
def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def loop(tmp_path: Path) -> dict:
    """A 12-pair generated folder dataset, its index, fused labels (the thermal labels of the adapt
    frames, scored 0.7) and a 4-frame export of them."""
    from data.adapters.folder import build_index
    from data.synthetic import generate
    from tasks.label_export import export_task

    root = tmp_path / "data"
    generate(root, 12, seed=3, progress=False, rgb_size=(160, 128), thermal_size=(128, 96))
    idx = build_index(root, "syn", tmp_path / "index", CLASSES, progress=False)
    thermal = idx.load_labels("thermal")
    adapt = {p.image_id for p in idx.select(split="adapt")}
    fused = {**thermal, "images": [im for im in thermal["images"] if im["id"] in adapt],
             "annotations": [{**a, "score": 0.7} for a in thermal["annotations"] if a["image_id"] in adapt]}
    picked = pick_frames(fused, {"fused": fused}, fused["images"], _flat, PickParams(n=4, seed=0))
    files = export_task(picked, fused, tmp_path / "task", Path("/"), CLASSES)
    return {"root": root, "idx": idx, "fused": fused, "picked": picked, "files": files, "tmp": tmp_path}


def test_the_export_loads_in_pycocotools_cvat_and_label_studio_hold_the_same_pixels(loop: dict) -> None:
    from pycocotools.coco import COCO

    files, fused, picked = loop["files"], loop["fused"], loop["picked"]
    ids = [p.image_id for p in picked]
    want = {i: sorted(xywh_to_xyxy([a["bbox"]])[0].tolist() for a in fused["annotations"] if a["image_id"] == i)
            for i in ids}
    coco = COCO(str(files["coco"]))
    assert sorted(coco.getImgIds()) == sorted(ids)
    assert all((files["images"] / coco.imgs[i]["file_name"]).is_file() for i in ids)
    for i in ids:
        assert np.allclose(sorted(xywh_to_xyxy([a["bbox"]])[0].tolist() for a in coco.imgToAnns[i]), want[i],
                           atol=1e-9, rtol=0)
    xml = ET.parse(files["cvat"]).getroot()
    assert xml.findtext("version") == "1.1"
    assert len(xml.findall("image/box")) == sum(len(v) for v in want.values())
    tasks = json.loads(files["label_studio"].read_text())
    for t in tasks:
        i = t["data"]["image_id"]
        got = sorted([r["value"]["x"] * r["original_width"] / 100, r["value"]["y"] * r["original_height"] / 100,
                      (r["value"]["x"] + r["value"]["width"]) * r["original_width"] / 100,
                      (r["value"]["y"] + r["value"]["height"]) * r["original_height"] / 100]
                     for r in t["predictions"][0]["result"])
        assert np.allclose(got, want[i], atol=1e-6, rtol=0)


def _index_boxes(root: Path, out: Path, split: str | None = None) -> tuple[dict, dict]:
    """The index of ``root`` rebuilt: per original id, (split, sorted xyxy thermal boxes with class ids)."""
    from data.adapters.folder import build_index

    idx = build_index(root, "syn", out, CLASSES, progress=False)
    th = idx.load_labels("thermal")
    by_id = {p.image_id: p for p in idx.pairs}
    boxes: dict[str, list] = {p.original_id: [] for p in idx.pairs}
    for a in th["annotations"]:
        boxes[by_id[a["image_id"]].original_id].append([a["category_id"], *np.round(a["bbox"], 3).tolist()])
    return {p.original_id: p.split for p in idx.pairs}, {k: sorted(v) for k, v in boxes.items()}


def _task_boxes(path: Path) -> dict[str, list]:
    ds = load_dataset(path)
    out: dict[str, list] = {Path(im["file_name"]).stem: [] for im in ds["images"]}
    names = {im["id"]: Path(im["file_name"]).stem for im in ds["images"]}
    for a in ds["annotations"]:
        out[names[a["image_id"]]].append([a["category_id"], *np.round(a["bbox"], 3).tolist()])
    return {k: sorted(v) for k, v in out.items()}


def test_export_then_import_round_trips_and_becomes_the_val_split_decisions_read(loop: dict) -> None:
    from data.index import load_index
    from data.splits import SplitSettings, split_datasets
    from pipeline.params import params_from_dict
    from pipeline.plan import plan
    from tasks.label_import import import_labels

    root, tmp = loop["root"], loop["tmp"]
    before_split, before = _index_boxes(root, tmp / "i0")
    res = import_labels(loop["files"]["coco"], root, CLASSES)
    exported = _task_boxes(loop["files"]["coco"])
    assert sorted(res.frames) == sorted(exported) and res.boxes == sum(len(v) for v in exported.values())
    split, after = _index_boxes(root, tmp / "i1")
    assert {k: after[k] for k in exported} == exported                         # unchanged round trip
    assert {k for k, s in split.items() if s == "val"} == set(exported)         # they are the val split now
    assert {k: v for k, v in after.items() if k not in exported} == {k: v for k, v in before.items() if k not in exported}
    assert {k: s for k, s in split.items() if k not in exported} == {k: s for k, s in before_split.items()
                                                                      if k not in exported}
    # the val split the run's decisions read: exactly these frames, exactly these boxes
    idx = load_index(tmp / "i1" / "syn.json")
    val = split_datasets(idx, SplitSettings(classes=CLASSES, val_split="val")).datasets["thermal_val"]
    stems = {im["id"]: Path(im["file_name"]).stem for im in val["images"]}
    got: dict[str, list] = {s: [] for s in stems.values()}
    for a in val["annotations"]:
        got[stems[a["image_id"]]].append([a["category_id"], *np.round(a["bbox"], 3).tolist()])
    assert {k: sorted(v) for k, v in got.items()} == exported
    p = params_from_dict({"data": {"roots": [{"path": str(root), "version": "syn"}], "val_split": "val"},
                          "teacher": {"config": "yolox_tiny_8xb8-300e_coco"}})
    steps = {s.name: s for s in plan(p)}
    assert steps["val"].needs["gt"].role == "thermal_val" and steps["student"].needs["val"].role == "thermal_val"


def test_cvat_xml_and_label_studio_exports_import_to_the_same_labels(loop: dict) -> None:
    from tasks.label_import import read_labelled_frames

    files = loop["files"]
    coco = {f.name: (f.classes, f.boxes) for f in read_labelled_frames(files["coco"])}
    cvat = {f.name: (f.classes, f.boxes) for f in read_labelled_frames(files["cvat"])}
    tasks = json.loads(files["label_studio"].read_text())
    for t in tasks:                    # a person submits the predictions unchanged
        t["annotations"] = [{"result": t.pop("predictions")[0]["result"]}]
    (loop["tmp"] / "ls_export.json").write_text(json.dumps(tasks))
    ls = {f.name: (f.classes, f.boxes) for f in read_labelled_frames(loop["tmp"] / "ls_export.json")}
    assert sorted(coco) == sorted(cvat) == sorted(ls)
    for name, (classes, boxes) in coco.items():
        assert cvat[name][0] == classes and ls[name][0] == classes
        assert np.array_equal(cvat[name][1], boxes)
        assert np.allclose(ls[name][1], boxes, atol=1e-9, rtol=0)


@pytest.mark.parametrize("defect, what", [
    ("outside", "lies outside the 128x96 image"),
    ("class", "unknown class 'bicycle'"),
    ("frame", "is not a thermal image of the dataset"),
    ("test", "is in the test split"),
    ("rotated", "is rotated by 30.0 degrees"),
])
def test_a_bad_import_is_refused_with_what_where_fix_and_changes_nothing(loop: dict, defect: str, what: str) -> None:
    from tasks.label_import import import_labels

    root, tmp = loop["root"], loop["tmp"]
    ds = load_dataset(loop["files"]["coco"])
    if defect == "rotated":             # a CVAT export with a rotated box
        xml = loop["files"]["cvat"].read_text().replace('<box ', '<box rotation="30.0" ', 1)
        (tmp / "bad.xml").write_text(xml)
    if defect == "outside":
        ds["annotations"][0]["bbox"] = [120.0, 10.0, 20.0, 10.0]
    elif defect == "class":
        ds["categories"].append({"id": 3, "name": "bicycle"})
        ds["annotations"][0]["category_id"] = 3
    elif defect == "frame":
        ds["images"][0]["file_name"] = "nowhere_000042.png"
    else:
        test = next(p for p in loop["idx"].pairs if p.split == "test")
        ds["images"][0]["file_name"] = Path(test.thermal_path).name
    bad = tmp / "bad.xml" if defect == "rotated" else save_dataset(tmp / "bad.json", ds)
    before = _tree_hash(root)
    with pytest.raises(InputError) as err:
        import_labels(bad, root, CLASSES)
    assert what in err.value.what and err.value.where == str(root) and "export again" in (err.value.fix or "")
    assert _tree_hash(root) == before


def test_human_training_labels_override_pseudo_labels_on_their_frames_only(loop: dict) -> None:
    from data.adapters.folder import build_index
    from tasks.label_export import human_labelled_ids
    from tasks.label_import import import_labels, override_labels, run_override

    root, tmp, fused = loop["root"], loop["tmp"], loop["fused"]
    ds = load_dataset(loop["files"]["coco"])
    for a in ds["annotations"]:                   # the person moves every box 2 px right
        a["bbox"] = [a["bbox"][0] + 2.0, *a["bbox"][1:]] if a["bbox"][0] + a["bbox"][2] + 2 <= 128 else a["bbox"]
    corrected = save_dataset(tmp / "corrected.json", ds)
    import_labels(corrected, root, CLASSES, as_training=True)
    idx = build_index(root, "syn", tmp / "i2", CLASSES, progress=False)
    picked = {p.image_id for p in loop["picked"]}
    assert human_labelled_ids(idx.path) == picked
    assert {p.image_id: p.split for p in idx.pairs if p.image_id in picked} == dict.fromkeys(picked, "adapt")
    human = idx.load_labels("thermal")
    save_dataset(tmp / "fused.json", fused)
    save_dataset(tmp / "human.json", human)
    out, counts = run_override(tmp / "fused.json", tmp / "human.json", idx.path, tmp / "override.json")
    new = load_dataset(out)
    assert counts["frames_overridden"] == len(picked)

    def per_image(d: dict, ids: set[int], keys: tuple[str, ...]) -> dict:
        return {i: sorted([a[k] for k in keys] for a in d["annotations"] if a["image_id"] == i) for i in ids}

    others = {im["id"] for im in fused["images"]} - picked
    keys = ("category_id", "bbox", "score", "iscrowd")
    assert per_image(new, others, keys) == per_image(fused, others, keys)          # nowhere else: exact
    assert per_image(new, picked, ("category_id", "bbox")) == per_image(human, picked, ("category_id", "bbox"))
    assert per_image(new, picked, ("category_id", "bbox")) != per_image(fused, picked, ("category_id", "bbox"))
    assert override_labels(fused, human, frozenset()) == fused


def test_human_repeat_copies_the_human_frames_and_nothing_else(loop: dict) -> None:
    from tasks.label_import import override_labels

    fused, picked = loop["fused"], sorted(p.image_id for p in loop["picked"])
    human = {**fused, "annotations": [{**a, "bbox": [a["bbox"][0] + 1.0, *a["bbox"][1:]]} for a in fused["annotations"]]}
    once, thrice = override_labels(fused, human, set(picked)), override_labels(fused, human, set(picked), repeat=3)
    assert thrice["images"][:len(once["images"])] == once["images"]
    assert thrice["annotations"][:len(once["annotations"])] == once["annotations"]
    copies = thrice["images"][len(once["images"]):]
    first = max(im["id"] for im in once["images"]) + 1
    assert [(im["id"], im["copy_of"]) for im in copies] == list(zip(range(first, first + 2 * len(picked)), sorted(picked * 2)))
    by_copy = {im["id"]: im["copy_of"] for im in copies}
    for im in copies:
        assert {k: v for k, v in im.items() if k not in ("id", "copy_of")} == \
            {k: v for k, v in next(o for o in once["images"] if o["id"] == im["copy_of"]).items() if k != "id"}

    def boxes(d: dict, i: int) -> list:
        return sorted([a["category_id"], a["bbox"], a["source"]] for a in d["annotations"] if a["image_id"] == i)

    extra = thrice["annotations"][len(once["annotations"]):]
    assert len(extra) == 2 * sum(a["image_id"] in set(picked) for a in once["annotations"])
    assert all(boxes(thrice, c) == boxes(once, o) for c, o in by_copy.items())
    assert len({a["id"] for a in thrice["annotations"]}) == len(thrice["annotations"])


def test_human_repeat_keys_the_override_steps_only_when_set() -> None:
    from pipeline.params import params_from_dict
    from pipeline.plan import plan

    base = {"data": {"synthetic": {"n_pairs": 8}}, "teacher": {"config": "yolox_tiny_8xb8-300e_coco"},
            "thermal_source": {"enabled": True}, "self_training": {"rounds": 2}}
    with pytest.raises(InputError) as err:
        params_from_dict({**base, "label": {"human_repeat": 0}})
    assert "label.human_repeat" in err.value.what
    assert not [s for s in plan(params_from_dict({**base, "label": {"human_repeat": 3}})) if s.kind == "label_override"]
    sections = {s.name: s.sections for s in plan(params_from_dict({**base, "label": {"override": True}}))}
    assert sections["override"] == sections["override@round2"] == ()
    p = params_from_dict({**base, "label": {"override": True, "human_repeat": 3}})
    assert {s.name: s.sections for s in plan(p) if s.kind == "label_override"} == {
        "override": ("label.human_repeat",), "override@round2": ("label.human_repeat",)}
    assert p.section("label.human_repeat") == 3


def test_plan_has_pick_last_and_override_before_each_student() -> None:
    from pipeline.params import params_from_dict
    from pipeline.plan import plan

    base = {"data": {"synthetic": {"n_pairs": 8}}, "teacher": {"config": "yolox_tiny_8xb8-300e_coco"},
            "thermal_source": {"enabled": True}, "self_training": {"rounds": 2}}
    assert "pick" not in [s.name for s in plan(params_from_dict(base))]
    rgb_only = {s.name: s for s in plan(params_from_dict({**base, "thermal_source": {"enabled": False},
                                                          "self_training": {"rounds": 1}, "label": {"pick_n": 3}}))}
    # the scoring is in the step's options, so in its key: a workspace picked under the old scoring picks again
    assert rgb_only["pick"].needs["labels"].step == "refine"
    assert rgb_only["pick"].options == {"fused": False, "scoring": "boxes"}
    steps = plan(params_from_dict({**base, "label": {"pick_n": 5, "override": True}}))
    names = [s.name for s in steps]
    by = {s.name: s for s in steps}
    assert names[-1] == "pick" and by["pick"].kind == "label_pick"
    assert {r: (ref.step, ref.role) for r, ref in by["pick"].needs.items()} == {
        "labels": ("fuse@round2", "coco"), "source:rgb": ("refine", "coco"), "source:thermal": ("pseudo@thermal", "coco"),
        "source:round2": ("pseudo@round2", "coco"), "pool": ("index", "thermal_adapt_images"),
        "index": ("index", "index"), "datasets": ("data", "datasets")}
    assert by["student"].needs["labels"].step == "override" and by["override"].needs["labels"].step == "fuse"
    assert by["student@round2"].needs["labels"].step == "override@round2"
    assert by["override@round2"].needs["labels"].step == "fuse@round2"


def test_the_pick_step_runs_through_the_executor_into_its_stage_folder_and_the_record(tmp_path: Path) -> None:
    """The ``label_pick`` kind through the plain door (the Prefect flow and DVC run the same steps): the
    index step's thermal labels stand in for the fused labels, so no model runs."""
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict
    from pipeline.plan import plan
    from pipeline.step import Ref, Step

    p = params_from_dict({"data": {"synthetic": {"n_pairs": 10, "seed": 2, "rgb_size": [160, 128],
                                                 "thermal_size": [128, 96]}},
                          "teacher": {"config": "yolox_tiny_8xb8-300e_coco"}, "label": {"pick_n": 3}})
    steps = [s for s in plan(p) if s.name in ("data", "index")]
    steps.append(Step("override", "label_override", (), needs={
        "labels": Ref("index", "thermal_adapt"), "human": Ref("index", "thermal_adapt"), "index": Ref("index", "index")}))
    steps.append(Step("pick", "label_pick", ("label", "pseudo", "data"), needs={
        "labels": Ref("index", "thermal_adapt"), "source:thermal": Ref("index", "thermal_adapt"),
        "pool": Ref("index", "thermal_adapt_images"), "index": Ref("index", "index"),
        "datasets": Ref("data", "datasets")}, options={"fused": False}))
    rec = run_pipeline(p, tmp_path / "ws", steps=steps)
    out = tmp_path / "ws" / "stages" / "pick"
    picked = json.loads((out / "picked.json").read_text())
    assert len(picked) == 3 and rec.status == "succeeded"
    assert set(rec.stage("pick").outputs) == {"coco", "cvat", "label_studio", "label_studio_config", "picked"}
    assert sorted(f.name for f in (out / "images").iterdir()) == sorted(x["file_name"] for x in picked)
    assert [im["file_name"] for im in load_dataset(out / "tasks.json")["images"]] == [x["file_name"] for x in picked]
    # no frame labelled by a person: the override step passes the labels through, box for box
    ws = tmp_path / "ws" / "stages"
    assert load_dataset(ws / "override" / "labels.json")["annotations"] == \
        load_dataset(ws / "index" / "thermal_adapt.json")["annotations"]
    again = run_pipeline(p, tmp_path / "ws", steps=steps)           # unchanged: reused, same pick
    assert again.stage("pick").reused and json.loads((out / "picked.json").read_text()) == picked
    # a pick for the val split (`label pick --for val`) is another step key: picked again, the seeded draw
    val = run_pipeline(p.model_copy(update={"label": p.label.model_copy(update={"purpose": "val"})}),
                       tmp_path / "ws", steps=steps)
    pool = json.loads((ws / "index" / "thermal_adapt_images.json").read_text())["images"]
    draw = pick_frames(new_dataset(pool, [], categories_from_names(CLASSES)), {}, pool, _flat,
                       PickParams(n=3, seed=0, purpose="val"))
    assert not val.stage("pick").reused
    assert [x["file_name"] for x in json.loads((out / "picked.json").read_text())] == \
        [Path(d.file_name).name for d in draw]


def test_label_import_cli_versions_a_dvc_tracked_dataset_and_refuses_bad_input_with_exit_2(loop: dict, capsys) -> None:
    """``rgb2thermal label import``: a DVC-tracked dataset folder is ``dvc add``-ed (its pointer changes);
    a refused import exits 2 with the one-line message and no traceback."""
    import subprocess
    import sys

    from rgb2thermal_cli.main import main

    root, tmp = loop["root"], loop["tmp"]
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", root.name], cwd=tmp, check=True)
    pointer = (tmp / "data.dvc").read_text()
    assert main(["label", "import", str(loop["files"]["cvat"]), "--dataset", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"on {len(loop['picked'])} frames" in out and "dvc add" in out and "data.val_split: val" in out
    assert (tmp / "data.dvc").read_text() != pointer                       # the new data version is tracked
    bad = load_dataset(loop["files"]["coco"])
    bad["images"][0]["file_name"] = "nowhere.png"
    before = _tree_hash(root)
    assert main(["label", "import", str(save_dataset(tmp / "bad.json", bad)), "--dataset", str(root)]) == 2
    err = capsys.readouterr().err
    assert "'nowhere.png' is not a thermal image of the dataset" in err and "Traceback" not in err
    assert _tree_hash(root) == before


def test_a_second_import_replaces_its_frames_entries_and_keeps_the_others(loop: dict) -> None:
    from tasks.label_import import import_labels

    root, tmp = loop["root"], loop["tmp"]
    import_labels(loop["files"]["coco"], root, CLASSES)
    ds = load_dataset(loop["files"]["coco"])
    first = ds["images"][0]
    ds["images"] = [first]
    ds["annotations"] = [{**a, "bbox": [1.0, 2.0, 3.0, 4.0]} for a in ds["annotations"] if a["image_id"] == first["id"]][:1]
    import_labels(save_dataset(tmp / "again.json", ds), root, CLASSES)
    human = _task_boxes(root / "labels_thermal" / "human_labels.json")
    exported = _task_boxes(loop["files"]["coco"])
    stem = Path(first["file_name"]).stem
    assert human == {**exported, stem: [[ds["annotations"][0]["category_id"], 1.0, 2.0, 3.0, 4.0]]}
    with pytest.raises(InputError, match="cannot import into the test split"):
        import_labels(loop["files"]["coco"], root, CLASSES, split="test")
