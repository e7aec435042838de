"""Adding a COCO step kind is a task module (+ its ``STAGE_SPEC``) and a plan entry: no pipeline code.

The first test holds every kind of every plan to that: a kind is either a COCO stage declared by
its task module (:data:`tasks.stage_specs.STAGE_SPECS`) or one of the pipeline's own few kinds.
The second adds a kind the project does not have (``keep_first``, defined here as a task module
would define it), runs it through the real executor after the real ``data`` and ``index`` steps,
and checks its output, its parameters (step option + the wired classes), its report and its key.
"""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType, ModuleType

import pytest
from pydantic import Field

from core import atomic
from core.coco import load_dataset, new_dataset, save_dataset
from core.errors import InputError
from core.stage_params import StageParams
from core.stage_report import StageReport, report_path
from core.stage_spec import StageSpec


def _params(**sections: object):
    from pipeline.params import params_from_dict

    return params_from_dict({"data": {"synthetic": {"n_pairs": 4, "rgb_size": [96, 80], "thermal_size": [80, 64]},
                                      "classes": ["car", "person"]},
                             "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco"}}, **sections})


@pytest.mark.parametrize("sections", [
    {},
    {"thermal_source": {"enabled": True}, "self_training": {"rounds": 2},
     "eval": {"baselines": ["source_only", "no_refinement", "classic", "oracle"]}},
    {"rgb_source": {"boxes": "labels"}},
])
def test_every_plan_kind_is_a_declared_coco_stage_or_one_of_the_pipelines_own(sections: dict) -> None:
    import importlib

    from pipeline import stages
    from pipeline.params import PipelineParams
    from pipeline.plan import plan
    from tasks.stage_specs import STAGE_SPECS

    kinds = {s.kind for s in plan(_params(**sections))}
    assert kinds - set(STAGE_SPECS) <= {*stages.KINDS, "train"}
    assert not set(STAGE_SPECS) & set(stages.KINDS)              # no pipeline code for a COCO stage
    for kind, spec in STAGE_SPECS.items():
        assert importlib.import_module(f"tasks.{kind}").STAGE_SPEC is spec and spec.kind == kind
        assert spec.run.__module__ == f"tasks.{kind}"
        assert spec.section in PipelineParams.model_fields
        section = PipelineParams.model_fields[spec.section].annotation
        # the params.yaml section is the stage class's fields minus those the pipeline sets
        assert set(section.model_fields) == set(spec.params.model_fields) - set(spec.wired)


class KeepFirstParams(StageParams):
    """Keep the first ``n`` boxes of each image (by annotation id), named after ``classes``."""

    n: int = Field(default=1, ge=0)
    classes: tuple[str, ...] = ("person",)


def run_keep_first(inp: Path, out: Path, params: KeepFirstParams, *, image_root: Path) -> StageReport:
    """A COCO stage as a task module writes one: COCO in, COCO out, a report beside it."""
    ds = load_dataset(inp)
    kept, per_image = [], {}
    for a in sorted(ds["annotations"], key=lambda a: a["id"]):
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        if per_image[a["image_id"]] <= params.n:
            kept.append(a)
    save_dataset(out, new_dataset(ds["images"], kept, ds["categories"]))
    report = StageReport(stage="keep_first", inputs={"coco": str(inp), "image_root": str(image_root)},
                         outputs={"coco": str(out)}, params=params.to_dict(),
                         counts={"boxes_in": len(ds["annotations"]), "boxes_out": len(kept)})
    report.save(report_path(out))
    return report


def _toy_module() -> ModuleType:
    """The task module of the new kind: its stage function and, at its end, its declaration."""
    module = ModuleType("tasks.keep_first")
    module.STAGE_SPEC = StageSpec(kind="keep_first", run=run_keep_first, params=KeepFirstParams,
                                  output="kept.json", inputs="labels", uses=("image_root",),
                                  wired={"classes": "classes"})
    return module


def test_a_new_coco_kind_runs_from_its_declaration_and_a_plan_entry(tmp_path: Path, monkeypatch) -> None:
    from pipeline import stages
    from pipeline.executor import run_pipeline
    from pipeline.plan import plan
    from pipeline.step import Ref, Step
    from tasks import stage_specs

    spec = _toy_module().STAGE_SPEC
    # the documented registration: one entry in tasks.stage_specs.STAGE_SPECS
    monkeypatch.setattr(stage_specs, "STAGE_SPECS", MappingProxyType({**stage_specs.STAGE_SPECS, spec.kind: spec}))
    assert spec.kind not in stages.KINDS
    p = _params()
    head = [s for s in plan(p) if s.name in ("data", "index")]

    def entry(n: object) -> Step:        # the plan entry: reads the RGB adapt labels, n as a step option
        return Step("keep_first", "keep_first", ("data",), needs={"labels": Ref("index", "rgb_adapt")},
                    options={"params": {"n": n}})

    ws = tmp_path / "ws"
    rec = run_pipeline(p, ws, steps=[*head, entry(1)])
    labels = load_dataset(ws / "stages" / "index" / "rgb_adapt.json")
    first = {}
    for a in sorted(labels["annotations"], key=lambda a: a["id"]):
        first.setdefault(a["image_id"], a)
    out = ws / "stages" / "keep_first"
    assert load_dataset(out / "kept.json")["annotations"] == sorted(first.values(), key=lambda a: a["id"])
    report = atomic.read_json(out / "kept.json.report.json")
    assert report["params"] == {"n": 1, "classes": ["car", "person"]}        # option + wired data.classes
    assert report["inputs"]["image_root"] == str(ws)
    assert report["counts"] == {"boxes_in": len(labels["annotations"]), "boxes_out": len(first)}
    assert [s.name for s in rec.stages] == ["data", "index", "keep_first"]
    assert set(atomic.read_json(out / "stage.json")["files"]) == {"coco", "report"}

    again = run_pipeline(p, ws, steps=[*head, entry(1)])
    assert [s.reused for s in again.stages] == [True, True, True]
    more = run_pipeline(p, ws, steps=[*head, entry(2)])                  # the option is in the key
    assert [s.reused for s in more.stages] == [True, True, False]
    assert atomic.read_json(out / "kept.json.report.json")["params"]["n"] == 2
    with pytest.raises(InputError, match="keep_first.n"):                # validated like a section
        run_pipeline(p, ws, steps=[*head, entry(-1)])
