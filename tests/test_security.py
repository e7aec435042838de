"""Security points of this field (issue 13): checkpoints are pickles, YAML can construct objects,
label files hold paths, servers listen on ports, and credentials live in the environment.

- only the checkpoint files a user (or a training, for its own files) names are unpickled in full;
  any other file keeps torch's strict ``weights_only`` default, which refuses a planted pickle and
  says why, and the payload never runs;
- every YAML file and ``--set`` value is read with ``yaml.safe_load``: a Python tag is refused as
  InputError and constructs nothing;
- the servers the product starts (Prefect's temporary API server, ``rgb2thermal serve``'s runner
  webserver) bind to loopback unless the user opts in.

Paths in label files and planted credentials are tested where real runs happen:
``tests/test_reliability.py::test_label_and_pairs_paths_outside_the_dataset_root_are_refused`` and
``tests/test_crash_resume.py::test_random_sigkills_resume_to_byte_identical_outputs`` (no planted secret in any
file of the workspace, nothing written into the data root).
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import yaml

from core.errors import InputError


class _Payload:
    """Unpickling this creates ``marker``: the test's stand-in for arbitrary code in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"state_dict": {}, "meta": {"x": _Payload(marker)}}, path)
    return path


def test_only_named_checkpoints_are_unpickled(tmp_path: Path) -> None:
    """A file named as trusted loads fully, through ``read_checkpoint`` and through mmengine with the
    training's trusted scheme; a planted pickle beside it (same folder, or reached through a symlink
    placed there) is refused by every strict path (torch's default, mmengine's plain loader,
    ``read_checkpoint(trusted=False)``), torch's message saying why, and its payload does not run.
    The named file itself, loaded by a strict path, is refused too: trust is per call."""
    import torch

    from core.compat import load_trusted_checkpoint
    from detection.checkpoints import read_checkpoint

    named = tmp_path / "mine.pth"
    # a class outside torch's allow-list, like mmengine's HistoryBuffer in a training checkpoint
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": argparse.Namespace(n=1)}, named)
    marker = tmp_path / "PAYLOAD_RAN"
    planted = _plant(tmp_path / "planted.pth", marker)
    (tmp_path / "other").mkdir()
    elsewhere = _plant(tmp_path / "other" / "x.pth", marker)
    link = tmp_path / "link.pth"
    link.symlink_to(elsewhere)
    assert load_trusted_checkpoint(named)["meta"].n == 1
    assert read_checkpoint(named)["meta"].n == 1
    for f in (planted, link, named):
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed") as ei:
            torch.load(f, map_location="cpu")
        assert "arbitrary code execution" in str(ei.value) or "trusted source" in str(ei.value)
        with pytest.raises(InputError, match="refused to unpickle a checkpoint that was not named by you"):
            read_checkpoint(f, trusted=False)
    pytest.importorskip("mmengine")
    from mmengine.runner.checkpoint import CheckpointLoader

    from tasks.train_hooks import trusted_checkpoint_uri

    assert CheckpointLoader.load_checkpoint(trusted_checkpoint_uri(named), map_location="cpu")["meta"].n == 1
    for f in (planted, link, named):
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            CheckpointLoader.load_checkpoint(str(f), map_location="cpu")   # a Runner's plain load_from
    assert not marker.exists(), "a planted checkpoint was unpickled"


def test_training_resumes_only_from_its_own_checkpoint_files(tmp_path: Path) -> None:
    """Resume unpickles the checkpoint mmengine's ``last_checkpoint`` marker names. A marker that
    points outside the training folder (planted, or left by a moved workspace) is taken by its file
    name inside the folder only, so a file elsewhere is never unpickled."""
    pytest.importorskip("mmengine")
    from tasks.train import _find_last

    work = tmp_path / "train"
    work.mkdir()
    outside = _plant(tmp_path / "epoch_3.pth", tmp_path / "PAYLOAD_RAN")
    (work / "last_checkpoint").write_text(str(outside))
    assert _find_last(work) is None                            # no epoch_3.pth inside: start afresh
    (work / "epoch_3.pth").write_bytes(b"own")
    assert _find_last(work) == work / "epoch_3.pth"            # the folder's own file of that name
    (work / "last_checkpoint").write_text("/elsewhere/moved/workspace/train/epoch_3.pth")
    assert _find_last(work) == work / "epoch_3.pth"
    (work / "last_checkpoint").write_text("../../etc/passwd")
    assert _find_last(work) is None
    assert not (tmp_path / "PAYLOAD_RAN").exists()


TAG = "!!python/object/apply:os.system ['touch {marker}']"


def test_yaml_is_read_safely_everywhere(tmp_path: Path) -> None:
    """A Python tag in params.yaml, a ``--set`` value or a homography registry file is an
    InputError; the command it names never runs."""
    from pipeline.params import load_params
    from registration.registry import load_registry

    marker = tmp_path / "YAML_RAN"
    tag = TAG.format(marker=marker)
    p = tmp_path / "params.yaml"
    p.write_text(f"data:\n  synthetic:\n    n_pairs: {tag}\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_params(p)
    p.write_text(yaml.safe_dump({"data": {"synthetic": {"n_pairs": 4}},
                                 "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco"}}}))
    with pytest.raises(InputError, match="not valid YAML"):
        load_params(p, [f"pseudo.score_threshold={tag}"])
    reg = tmp_path / "registry"
    reg.mkdir()
    (reg / "v1.yaml").write_text(f"schema: x\nentries: {tag}\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_registry(reg, "v1")
    assert not marker.exists(), "a YAML tag constructed an object"


def test_prefect_temporary_server_binds_to_loopback() -> None:
    """With no PREFECT_API_URL a flow starts Prefect's temporary API server: it listens on 127.0.0.1."""
    pytest.importorskip("prefect")
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer(port=8765)
    assert server.address == "http://127.0.0.1:8765"
    assert server.api_url.startswith("http://127.0.0.1:")


def test_serve_refuses_a_non_loopback_webserver_unless_opted_in(tmp_path: Path, monkeypatch, capsys) -> None:
    """``rgb2thermal serve``: the Prefect runner's webserver (off by default) may bind only to
    loopback; a wider address is an InputError naming the setting, unless ``--allow-remote``."""
    pytest.importorskip("prefect")
    from rgb2thermal_cli.main import main

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"data": {"synthetic": {"n_pairs": 4}, "val_fraction": 0.25},
                                 "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco"}}}))
    args = ["serve", "--params", str(p), "--workspace", str(tmp_path / "ws"), "--dry-run"]
    assert main(args) == 0                                       # default: no webserver at all
    monkeypatch.setenv("PREFECT_RUNNER_SERVER_ENABLE", "true")
    monkeypatch.setenv("PREFECT_RUNNER_SERVER_HOST", "localhost")
    assert main(args) == 0
    capsys.readouterr()
    monkeypatch.setenv("PREFECT_RUNNER_SERVER_HOST", "0.0.0.0")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "0.0.0.0" in err and "PREFECT_RUNNER_SERVER_HOST" in err and "--allow-remote" in err
    assert main([*args, "--allow-remote"]) == 0


def test_stage_inputs_cannot_climb_out_of_their_image_folder(tmp_path: Path) -> None:
    """``stage infer`` / ``stage refine`` / evaluation / training sets: a COCO ``file_name`` with ``..`` leaving the image folder
    is an InputError naming the file and ``images[i]``, before any image is read or a model is
    loaded, and nothing is written; ``..`` that stays inside and the pipeline's absolute paths pass."""
    import json

    from core.coco import refuse_escaping_file_names
    from tasks.infer import InferParams, run_infer
    from tasks.refine import RefineParams, run_refine

    def coco(name: str) -> Path:
        p = tmp_path / "labels.json"
        p.write_text(json.dumps({"images": [{"id": 1, "file_name": name, "width": 8, "height": 8}],
                                 "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
                                                  "area": 9, "iscrowd": 0}],
                                 "categories": [{"id": 1, "name": "person"}]}))
        return p

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for you")
    (tmp_path / "images").mkdir()
    for name in ("../secret.png", "sub/../../secret.png", "../../../../etc/passwd"):
        with pytest.raises(InputError, match="climbs out of the image folder") as ei:
            run_infer(coco(name), tmp_path / "i.json", InferParams(config="no-such-config.py", device="cpu"),
                      image_root=tmp_path / "images", cache_dir=tmp_path / "c")
        assert "labels.json: images[0] (id 1)" in str(ei.value)
        with pytest.raises(InputError, match="climbs out of the image folder"):
            run_refine(coco(name), tmp_path / "r.json",
                       RefineParams(method="classical", image_root=str(tmp_path / "images")), cache_dir=tmp_path / "c")
    assert not (tmp_path / "i.json").exists() and not (tmp_path / "r.json").exists()
    # evaluation (the infer stage's infer_results, before the detector loads) and training sets
    # (check_dataset, before any training) refuse it too
    from tasks.infer import infer_results

    with pytest.raises(InputError, match="climbs out of the image folder"):
        infer_results(coco("../secret.png"), tmp_path / "e.json", InferParams(config="no-such-config.py", device="cpu"),
                      cache_dir=tmp_path / "c", image_root=tmp_path / "images")
    assert not (tmp_path / "e.json").exists()
    pytest.importorskip("mmdet")
    from detection.train_config import check_dataset
    from detection.train_spec import DatasetSpec

    with pytest.raises(InputError, match="climbs out of the image folder"):
        check_dataset(DatasetSpec(ann_file=coco("../secret.png"), img_root=tmp_path / "images"), ["person"], "train")
    for ok in ("a.png", "sub/../a.png", str(secret)):
        refuse_escaping_file_names({"images": [{"id": 1, "file_name": ok}]}, tmp_path / "images", "x.json")


def test_the_champion_pointer_cannot_make_rescoring_unpickle_a_planted_file(tmp_path: Path) -> None:
    """``champion.json`` (written by the product, not named by the user) points to the archived
    model the nightly re-scores. A pointer edited to name a planted pickle is refused under torch's
    strict default with an InputError saying why; the payload never runs. A slim checkpoint (what
    the archive holds) loads under the same strict default."""
    pytest.importorskip("mmdet")
    import torch

    from detection.detector import read_checkpoint
    from pipeline.champion import evaluate_model

    marker = tmp_path / "PAYLOAD_RAN"
    planted = _plant(tmp_path / "best_slim.pth", marker)
    with pytest.raises(InputError, match="refused to unpickle a checkpoint that was not named by you") as ei:
        evaluate_model({"config": "yolox_tiny_8xb8-300e_coco", "checkpoint": str(planted)}, tmp_path / "gt.json",
                       cache_dir=tmp_path / "cache")
    assert str(planted) in str(ei.value) and "weights_only" in str(ei.value)
    assert not marker.exists(), "rescoring unpickled a planted checkpoint"
    slim = tmp_path / "slim.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": {"dataset_meta": {"classes": ["person"]}}}, slim)
    assert read_checkpoint(slim, trusted=False)["meta"]["dataset_meta"]["classes"] == ["person"]


def test_a_damaged_sam2_checkpoint_is_an_input_error_naming_it(tmp_path: Path) -> None:
    """SAM2 checkpoints are read like detector checkpoints: a zero-byte, truncated, text or broken-zip
    ``.pt`` is InputError "not a readable checkpoint" naming the file (no torch traceback), before the
    model is touched; a whole checkpoint of plain tensors still loads (here: its keys do not fit, so
    the fit check speaks, proving the bytes were read)."""
    import torch

    from tasks.refine_sam2 import _load_state

    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(3)}}, good)
    data = good.read_bytes()
    for name, raw in {"empty": b"", "truncated": data[: len(data) // 2], "text": b"not a checkpoint\n",
                      "bad_zip": b"PK\x03\x04" + bytes(200)}.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(raw)
        with pytest.raises(InputError, match="not a readable checkpoint") as ei:
            _load_state(None, str(path), "sam2.1_hiera_t")
        assert str(path) in str(ei.value) and f"file is {len(raw)} bytes" in str(ei.value), name

    class _Model:
        def load_state_dict(self, sd, strict=False):
            return ["image_encoder.x"], list(sd)

    with pytest.raises(InputError, match="does not fit config"):
        _load_state(_Model(), str(good), "sam2.1_hiera_t")
