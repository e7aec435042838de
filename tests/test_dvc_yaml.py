"""dvc.yaml is generated from the one step declaration (pipeline/plan.py) and declares everything
each step reads: upstream stage folders, dataset roots, model files, the homography registry."""
from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_committed_dvc_yaml_is_the_generated_one() -> None:
    from pipeline.dvcgen import dvc_yaml
    from pipeline.params import load_params

    generated = dvc_yaml(load_params(REPO / "params.yaml"), REPO)
    assert (REPO / "dvc.yaml").read_text() == generated, "dvc.yaml is stale: run `rgb2thermal dvc-yaml`"


def test_external_files_and_sections_become_deps_and_params(tmp_path: Path) -> None:
    from pipeline.dvcgen import dvc_yaml
    from pipeline.params import params_from_dict

    (tmp_path / "data").mkdir()
    (tmp_path / "registry").mkdir()
    (tmp_path / "models").mkdir()
    for f in ("models/det.py", "models/det.pth", "models/sam2.pt"):
        (tmp_path / f).write_text("x")
    p = params_from_dict({"data": {"roots": [{"path": str(tmp_path / "data"), "version": "v1"}]},
                          "teacher": {"config": str(tmp_path / "models/det.py"),
                                      "checkpoint": str(tmp_path / "models/det.pth")},
                          "warp": {"registry_dir": str(tmp_path / "registry")},
                          "refine": {"method": "sam2", "sam2_checkpoint": str(tmp_path / "models/sam2.pt")}})
    doc = yaml.safe_load(dvc_yaml(p, tmp_path))
    st = doc["stages"]
    assert list(st) == ["data", "index", "teacher", "infer", "pseudo", "warp", "refine", "student", "baseline",
                        "quality", "eval"]
    assert st["data"]["deps"] == ["data"] and st["data"]["params"] == ["data"]
    assert st["teacher"]["deps"] == ["models/det.pth", "models/det.py"]
    assert "workspace/stages/teacher" in st["infer"]["deps"]
    assert st["warp"]["deps"] == ["workspace/stages/pseudo", "workspace/stages/index", "registry"]
    assert "models/sam2.pt" in st["refine"]["deps"] and st["refine"]["params"] == ["refine"]
    assert st["eval"]["metrics"] == [{"workspace/stages/eval/metrics.json": {"cache": False}}]
    for name, stage in st.items():
        assert stage["cmd"] == f"rgb2thermal run --stage {name} --params params.yaml --workspace workspace"
