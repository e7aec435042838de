"""The COCO stages the pipeline can run, by step kind: the one list a new COCO stage joins.

Each entry is its task module's ``STAGE_SPEC`` (:class:`core.stage_spec.StageSpec`). The pipeline
runs a step of one of these kinds through its one adapter (:mod:`pipeline.kinds`) and builds the
kind's ``params.yaml`` section from the spec (:mod:`pipeline.params`). Kinds that are not COCO in,
COCO out (data, index, model, train, quality, eval) are the pipeline's own (:mod:`pipeline.stages`).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from core.stage_spec import StageSpec
from tasks import fuse, infer, pseudo, refine, warp

#: step kind -> spec (read-only).
STAGE_SPECS: Mapping[str, StageSpec] = MappingProxyType({s.kind: s for s in (
    infer.STAGE_SPEC,
    pseudo.STAGE_SPEC,
    warp.STAGE_SPEC,
    refine.STAGE_SPEC,
    fuse.STAGE_SPEC,
)})
