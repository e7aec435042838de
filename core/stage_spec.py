"""A COCO stage's declaration for the pipeline: what it reads, writes and is parameterised by.

Why a declaration: every COCO-in/COCO-out stage (``infer``, ``pseudo``, ``warp``, ``refine``,
``fuse``) is wired into a pipeline step the same way (input files -> ``run_X(inputs, out, params,
**common)`` -> a step output built from the stage report). The task module states the facts once,
at its end (``STAGE_SPEC = StageSpec(...)``), and the pipeline runs every such kind through one
adapter (:mod:`pipeline.kinds`) and derives its ``params.yaml`` section from ``params``/``wired``
(:mod:`pipeline.params`). So a new COCO stage is a task module + its plan entry, with no glue of
its own. Kept in ``core`` because the tasks declare it and the pipeline reads it; it imports no
layer above.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from core.stage_params import StageParams
from core.stage_report import StageReport

#: Keyword arguments the pipeline passes a stage's ``run`` when the stage lists them in ``uses``:
#: ``cache_dir`` (the per-image cache folder of the stage's kind, shared by workspaces: entries are
#: content-keyed), ``hash_memo`` (the run's :class:`core.hashing.HashMemo`), ``image_root`` (the
#: folder the step's relative image paths resolve against: the workspace), ``index`` (the paired
#: index the step reads as input role ``index``), ``compute`` (where per-image work runs).
Common = Literal["cache_dir", "hash_memo", "image_root", "index", "compute"]

#: Values the pipeline supplies for parameter fields (``wired``/``filled``): ``classes`` (the
#: target class names, ``data.classes``, a tuple), ``image_root`` (the workspace, a string),
#: ``model_config``/``model_checkpoint`` (of the model descriptor the step reads as input role
#: ``model``), ``source`` (the step's ``source`` option: a provenance tag), ``registry`` (the file
#: the step reads as role ``registry``: an ``external`` folder or an upstream output).
Wire = Literal["classes", "image_root", "model_config", "model_checkpoint", "source", "registry"]


@dataclass(frozen=True)
class StageSpec:
    """One COCO stage as the pipeline sees it.

    - ``kind``: the step kind a plan entry names (``Step(name, kind, ...)``).
    - ``run``: ``run(inputs, out, params, **common) -> StageReport``; ``out`` is the COCO file
      written (its report beside it, ``core.stage_report.report_path``).
    - ``params``: the stage's parameter class.
    - ``output``: the COCO file's name in the step's folder (``pseudo.json``).
    - ``inputs``: one input role (its file is passed) or several (a mapping role -> file).
    - ``uses``: the :data:`Common` keyword arguments ``run`` accepts.
    - ``section``: the ``params.yaml`` section holding the user's values (a
      ``PipelineParams`` field), or None: the class defaults + the step's ``params`` option.
    - ``wired``: parameter fields the pipeline sets (field -> :data:`Wire`); a user may not set
      them, so the section leaves them out.
    - ``filled``: fields the user may set and the pipeline fills when left unset (field -> Wire).
    """

    kind: str
    run: Callable[..., StageReport]
    params: type[StageParams]
    output: str
    inputs: str | tuple[str, ...]
    uses: tuple[Common, ...] = ()
    section: str | None = None
    wired: Mapping[str, Wire] = field(default_factory=dict)
    filled: Mapping[str, Wire] = field(default_factory=dict)
