"""The COCO data sets a run trains and scores on, cut from a paired index by split.

Why here (the data layer) and not in the pipeline: which frames are adapt, test and val is a
property of the data, and every door (plain run, Prefect, DVC, the benchmarks) must cut them the
same way. :class:`SplitSettings` holds the settings (the pipeline's ``data`` section extends it);
:func:`split_datasets` returns the data sets; :func:`carve_val` chooses the val pairs.

Boxes stay as the index wrote them: COCO ``xywh`` pixels.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import InputError
from data.index import DEFAULT_CLASSES, Pair, PairedIndex, images_dataset


class SplitSettings(BaseModel):
    """Which classes and splits a run uses, and where its val split comes from."""

    model_config = ConfigDict(extra="forbid")

    classes: list[str] = Field(default_factory=lambda: list(DEFAULT_CLASSES), min_length=1)
    adapt_split: str = "adapt"
    test_split: str = "test"
    val_split: str | None = Field(default=None, description=(
        "a split of pairs WITH thermal labels used for every decision (best checkpoints, sweeps, nightly "
        "promotion); the test split is only ever reported"))
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0, description=(
        "or: carve this fraction of the adapt pairs out as the val split (chosen by a hash of the pair id and "
        "val_seed, so the same pairs are chosen on every machine); they leave the adapt split"))
    val_seed: int = 0

    @property
    def has_val(self) -> bool:
        """Whether a validation split exists (decisions use it; without it they say what they used instead)."""
        return self.val_split is not None or self.val_fraction > 0

    @model_validator(mode="after")
    def _val_source(self) -> SplitSettings:
        if self.val_split is not None and self.val_fraction > 0:
            raise ValueError("give at most one of data.val_split (a labelled split) or data.val_fraction (carved "
                             "from the adapt split)")
        if self.val_split is not None and self.val_split in (self.adapt_split, self.test_split):
            raise ValueError(f"data.val_split '{self.val_split}' must differ from the adapt and test splits "
                             "(use data.val_fraction to carve val frames out of the adapt split)")
        return self


@dataclass
class SplitDatasets:
    """The COCO data sets of one index (``datasets``: name -> COCO dict) and their frame counts.

    Names: ``rgb_adapt`` (RGB labels of the adapt split, val pairs removed), ``thermal_test``,
    ``thermal_adapt`` (thermal labels of the adapt split; no annotations = none exist),
    ``thermal_adapt_images`` (the thermal adapt frames, no labels: what a thermal source runs
    on) and, with a val split, ``thermal_val``.
    """

    datasets: dict[str, dict] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def carve_val(pairs: Iterable[Pair], fraction: float, seed: int) -> frozenset[int]:
    """Image ids of the adapt pairs carved out as the val split (``data.val_fraction``).

    Why a hash and not a random draw: a pair's membership depends only on its ``pair_id``
    (``"<version>:<original id>"``) and ``seed``, so it is the same on every machine, in every
    workspace, and stays the same when pairs are added (a new pair never moves an old one).

    Args:
        pairs: the adapt pairs.
        fraction: share in [0, 1) of the pairs to carve (in expectation).
        seed: the hash seed (``data.val_seed``).
    """
    def u(pair_id: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()[:8], "big") / 2**64

    return frozenset(p.image_id for p in pairs if u(p.pair_id) < fraction)


def subset(ds: dict, keep: set[int] | frozenset[int]) -> dict:
    """``ds`` with only the images whose id is in ``keep`` (and their annotations)."""
    return {**ds, "images": [im for im in ds["images"] if im["id"] in keep],
            "annotations": [a for a in ds["annotations"] if a["image_id"] in keep]}


def split_coco(ds: dict, split: str, drop: frozenset[int] = frozenset()) -> dict:
    """The images of ``ds`` in ``split`` (the COCO image's ``split`` field), minus the ids in ``drop``."""
    return subset(ds, {im["id"] for im in ds["images"] if im.get("split") == split and im["id"] not in drop})


def _check_splits(images: Sequence[dict], s: SplitSettings, where: str) -> None:
    present = {im.get("split") for im in images}
    for want in (s.adapt_split, s.test_split, *([s.val_split] if s.val_split else [])):
        if want not in present:
            raise InputError(f"no image has split '{want}' (splits present: {sorted(x for x in present if x)})",
                             where, "set data.adapt_split/data.test_split/data.val_split or fix split.csv")


def split_datasets(idx: PairedIndex, s: SplitSettings) -> SplitDatasets:
    """Cut ``idx`` into the data sets a run uses (see :class:`SplitDatasets`).

    Raises:
        InputError: no RGB labels, no thermal labels, a named split absent, or a val split
            without frames or thermal boxes (decisions cannot be made on it).
    """
    rgb, thermal = idx.load_labels("rgb"), idx.load_labels("thermal")
    where = str(idx.path)
    if rgb is None:
        raise InputError("the dataset has no RGB labels", where, "the pipeline needs labelled RGB images "
                         "(teacher training) or at least RGB images; add labels_rgb/")
    _check_splits(rgb["images"], s, where)
    adapt_pairs = idx.select(split=s.adapt_split)
    carved = carve_val(adapt_pairs, s.val_fraction, s.val_seed) if s.val_fraction > 0 else frozenset()
    if thermal is None:
        raise InputError("the dataset has no thermal labels for the test split", where,
                         "add labels_thermal/ (test split at least): evaluation needs thermal ground truth")
    out = SplitDatasets(
        datasets={"rgb_adapt": split_coco(rgb, s.adapt_split, carved),
                  "thermal_test": split_coco(thermal, s.test_split),
                  "thermal_adapt": split_coco(thermal, s.adapt_split, carved),
                  "thermal_adapt_images": images_dataset([p for p in adapt_pairs if p.image_id not in carved],
                                                         "thermal", s.classes)},
        counts={"pairs": len(idx.pairs), "adapt": len(adapt_pairs) - len(carved),
                "test": len(idx.select(split=s.test_split))})
    if s.has_val:
        val = subset(thermal, carved) if s.val_fraction > 0 else split_coco(thermal, s.val_split or "")
        how = f"data.val_fraction={s.val_fraction}" if s.val_fraction > 0 else f"data.val_split={s.val_split}"
        if not val["images"] or not val["annotations"]:
            raise InputError(f"the val split has {len(val['images'])} frames and {len(val['annotations'])} thermal "
                             f"boxes: decisions cannot be made on it", how,
                             "raise data.val_fraction, or name a split whose pairs have thermal labels "
                             "(labels_thermal/), or remove the val setting")
        out.datasets["thermal_val"] = val
        out.counts["val"] = len(val["images"])
    return out
