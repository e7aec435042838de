"""Nothing depends on the folder a command is started in: ``stage refine``'s cache defaults to
``.cache/refine`` beside ``--out`` (said in ``--help``), and ``run_refine`` has no default cache
folder at all; the warp stage's device is an option of its own."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from core import atomic, coco
from core.stage_report import report_path


def test_stage_refine_caches_beside_its_output_not_in_the_current_folder(tmp_path: Path, monkeypatch,
                                                                         capsys) -> None:
    from data.synthetic import generate
    from rgb2thermal_cli.main import main
    from tasks.refine import run_refine

    assert inspect.signature(run_refine).parameters["cache_dir"].default is inspect.Parameter.empty
    syn = tmp_path / "syn"
    generate(syn, 2, seed=1, progress=False)
    ds = coco.load_dataset(syn / "labels_thermal" / "coco.json")
    for im in ds["images"]:
        im["file_name"] = str(syn / "thermal" / im["file_name"])
    inp = tmp_path / "warped.json"
    coco.save_dataset(inp, ds)
    elsewhere = tmp_path / "started_here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "results" / "refined.json"
    assert main(["stage", "refine", "--in", str(inp), "--out", str(out), "--method", "classical"]) == 0
    capsys.readouterr()
    entries = [p for p in (tmp_path / "results" / ".cache" / "refine").rglob("*") if p.is_file()]
    misses = atomic.read_json(report_path(out))["cache_misses"]
    assert len(entries) == misses and misses > 0          # one entry per image refined, all of them here
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(SystemExit):
        main(["stage", "refine", "--help"])
    assert ".cache/refine/ in --out's folder" in " ".join(capsys.readouterr().out.split())


def test_stage_warp_takes_the_device_as_an_option(capsys) -> None:
    from rgb2thermal_cli.main import main

    with pytest.raises(SystemExit):
        main(["stage", "warp", "--help"])
    assert "--device {auto,cpu,cuda}" in capsys.readouterr().out
