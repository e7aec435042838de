"""Class-head transfer: start a person+car head from a COCO (80-class) checkpoint's rows.

Why: re-initialising the classifier throws away what the COCO model knows about "person"
and "car". In YOLOX the per-class logits are the output channels of
``bbox_head.multi_level_conv_cls.{0,1,2}`` (weight ``(num_classes, C, 1, 1)``, bias
``(num_classes,)``), so row ``k`` of the new head is row ``map[k]`` of the old one.
With one source class a row is copied bit-for-bit; with several (e.g. car <- car, truck,
bus) weights and biases are averaged (documented approximation, reported).

Every other tensor is copied unchanged; a tensor whose shape differs in any other way is
an ``InputError`` (the checkpoint does not belong to this architecture).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import InputError

log = logging.getLogger(__name__)

CLS_KEY_MARKERS = ("multi_level_conv_cls", "conv_cls", "retina_cls", "gfl_cls", "atss_cls", "fcos_cls")


@dataclass
class TransferReport:
    """What happened to each tensor and class row (stored in the run's JSON report)."""

    mode: str                                   # "transfer", "reinit" or "same-classes"
    source_classes: list[str]
    target_classes: list[str]
    mapping: dict[str, list[str]]               # target class -> source class names used
    transferred_keys: list[str] = field(default_factory=list)
    reinitialised_keys: list[str] = field(default_factory=list)
    copied_keys: int = 0
    averaged_rows: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def class_mapping(target_classes: Sequence[str], source_classes: Sequence[str],
                  class_map: Mapping[str, Sequence[str]] | None = None) -> dict[int, list[int]]:
    """``{target index: [source indices]}``; default maps each target class to the same name.

    Unknown names raise ``InputError`` listing the checkpoint's classes.
    """
    src_index = {n: i for i, n in enumerate(source_classes)}
    out: dict[int, list[int]] = {}
    for t, name in enumerate(target_classes):
        sources = list(class_map[name]) if class_map and name in class_map else [name]
        if not sources:
            raise InputError(f"class_map gives no source class for '{name}'", "class_map",
                             f"map it to one or more of the checkpoint's classes: {list(source_classes)}")
        unknown = [s for s in sources if s not in src_index]
        if unknown:
            raise InputError(f"class(es) {unknown} (for target '{name}') are not classes of the checkpoint; "
                             f"it has: {', '.join(source_classes)}", "class_map",
                             "map each target class to names from that list, e.g. class_map: {car: [car, truck]}")
        out[t] = [src_index[s] for s in sources]
    return out


def _is_cls_key(key: str) -> bool:
    return any(m in key for m in CLS_KEY_MARKERS)


def transfer_state_dict(source: Mapping[str, Any], target: Mapping[str, Any], source_classes: Sequence[str],
                        target_classes: Sequence[str], mode: str = "transfer",
                        class_map: Mapping[str, Sequence[str]] | None = None) -> tuple[dict[str, Any], TransferReport]:
    """Initial weights for a model with ``target`` state (freshly initialised) from ``source``.

    ``mode="transfer"``: classifier rows carried over per ``class_mapping``;
    ``mode="reinit"``: classifier tensors keep the target's fresh initialisation (the baseline).
    Returns the new state dict (all of ``target``'s keys) and a report.
    """
    if mode not in ("transfer", "reinit"):
        raise InputError(f"unknown head_init '{mode}'", "head_init", "use 'transfer' or 'reinit'")
    n_src, n_tgt = len(source_classes), len(target_classes)
    same = list(source_classes) == list(target_classes)
    mapping = class_mapping(target_classes, source_classes, class_map) if (mode == "transfer" and not same) else {}
    report = TransferReport(mode="same-classes" if same else mode, source_classes=list(source_classes),
                            target_classes=list(target_classes),
                            mapping={target_classes[t]: [source_classes[s] for s in srcs] for t, srcs in mapping.items()})
    missing = [k for k in target if k not in source and not k.endswith("num_batches_tracked")]
    if missing:
        raise InputError(f"checkpoint lacks {len(missing)} weights of the model, e.g. {missing[:3]}", "load_from",
                         "use a checkpoint of the same architecture as base_model")
    out: dict[str, Any] = {}
    for key, tgt in target.items():
        if key not in source:
            out[key] = tgt.clone()
            continue
        src = source[key]
        renamed_class_rows = not same and _is_cls_key(key) and src.shape[0] == n_src
        if tuple(src.shape) == tuple(tgt.shape) and not renamed_class_rows:
            out[key] = src.detach().clone()
            report.copied_keys += 1
            continue
        is_class_tensor = (_is_cls_key(key) and src.shape[0] == n_src and tgt.shape[0] == n_tgt
                           and tuple(src.shape[1:]) == tuple(tgt.shape[1:]))
        if not is_class_tensor:
            raise InputError(f"weight '{key}' has shape {tuple(src.shape)} in the checkpoint but "
                             f"{tuple(tgt.shape)} in the model", "load_from",
                             "use a checkpoint of the same architecture (depth/width) as base_model")
        if mode == "reinit":
            out[key] = tgt.clone()
            report.reinitialised_keys.append(key)
            continue
        out[key] = _mapped_rows(src, tgt, mapping, source_classes, target_classes, report)
        report.transferred_keys.append(key)
    if not same and mode == "transfer" and not report.transferred_keys:
        raise InputError("no classifier tensor found to transfer (unknown head layout)", "load_from",
                         "use head_init: reinit, or a YOLOX/RetinaNet-style head")
    unused = [k for k in source if k not in target]
    if unused:
        report.warnings.append(f"{len(unused)} checkpoint weights not used by the model, e.g. {unused[:3]}")
        log.warning(report.warnings[-1])
    return out, report


def _mapped_rows(src: Any, tgt: Any, mapping: Mapping[int, Sequence[int]], source_classes: Sequence[str],
                 target_classes: Sequence[str], report: TransferReport) -> Any:
    """A class tensor of the target (rows = target classes) from the source's rows: each target row
    is its one source row, or the mean of several (recorded in ``report.averaged_rows``)."""
    import torch

    new = tgt.clone()
    for t, srcs in mapping.items():
        if len(srcs) == 1:
            new[t] = src[srcs[0]].detach().clone()
        else:
            new[t] = torch.stack([src[s] for s in srcs]).mean(dim=0).to(new.dtype)
            row = f"{target_classes[t]} <- mean({', '.join(source_classes[s] for s in srcs)})"
            if row not in report.averaged_rows:
                report.averaged_rows.append(row)
    return new
