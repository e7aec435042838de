"""Hours per stage for FLIR-sized data (26k pairs) with YOLOX-s and YOLOX-x: one GPU, one 4-GPU node, four nodes.

Why a script: the README's "Scale" table must follow from stated per-image costs, so a new
measurement (``scripts/gpu_check.sh`` on a GPU machine) changes one input here and the table with
it. Run ``python -m benchmarks.scale_estimate`` (prints the Markdown table the README holds).

Every input below says where it comes from:
- MEASURED: measured in this repository on the 2-core CPU machine (``benchmarks/RESULTS.md``);
- PUBLISHED: a number published for a named GPU (cited);
- ASSUMED: no measurement behind it; the reason is given.
GPU per-image costs are NOT measured here (no GPU was available when this was written).
"""
from __future__ import annotations

from dataclasses import dataclass

PAIRS = 26_000                 # FLIR ADAS v2-sized: ~26k RGB/thermal pairs
ADAPT = int(PAIRS * 0.8)       # ASSUMED split: 80 % adapt (teacher labels RGB, student trains on thermal) ...
TEST = PAIRS - ADAPT           # ... 20 % test
VAL = int(ADAPT * 0.1)         # data.val_fraction 0.1 carved from adapt (scored, not trained on)
EPOCHS = 30                    # the msrs-bench recipe's student epochs (params.msrs-bench.yaml)
EVAL_MODELS = 2                # adapted student + source_only (the teacher on thermal)

# --- per-image costs, seconds ------------------------------------------------------------------
#: MEASURED (RESULTS.md "Label transfer: inference"): infer stage minus bare forward, 256 images at
#: 160x128, one CPU thread: (5.06 - 3.76) / 256. Decoding, hashing, test pipeline, cache, COCO.
#: Larger frames decode slower (not measured): a lower bound for FLIR's 640x512 thermal frames.
INFER_CPU_SIDE = (5.06 - 3.76) / 256
#: PUBLISHED: YOLOX paper / Megvii YOLOX README, "Speed V100 (ms)", 640x640, FP16, batch 1:
#: YOLOX-s 9.8 ms, YOLOX-x 17.3 ms (model forward; Ge et al. 2021, arXiv:2107.08430).
INFER_GPU = {"YOLOX-s": 9.8e-3, "YOLOX-x": 17.3e-3}
#: PUBLISHED: mmdet's YOLOX-s COCO training log, 0.37 s per iteration of 64 images on 8 GPUs (8 x 8,
#: V100; the time field is seconds, confirmed by a maintainer in open-mmlab/mmdetection issue #6832):
#: 0.37 * 8 / 64 s per image per GPU, at 640 px with Mosaic/MixUp.
TRAIN_GPU_S = 0.37 * 8 / 64
#: ASSUMED: YOLOX-x trains slower by its FLOPs ratio (281.9 / 26.8 GFLOPs, YOLOX README). A bound
#: from above: YOLOX-s on a V100 is partly data-loader-bound, so the true ratio is likely smaller.
TRAIN_GPU = {"YOLOX-s": TRAIN_GPU_S, "YOLOX-x": TRAIN_GPU_S * 281.9 / 26.8}
#: PUBLISHED: SAM 2.1 hiera-tiny, 91.2 FPS on an A100 (facebookresearch/sam2 README; torch 2.5.1,
#: CUDA 12.4; measured on video frames: ASSUMED equal to one image + its box prompts).
SAM2_GPU = 1 / 91.2
#: MEASURED (RESULTS.md "Peak RSS of the refine stage"): classical refiner, 10000 frames in 47.7 s.
REFINE_CLASSICAL = 47.7 / 10_000
#: MEASURED (RESULTS.md "Pipeline: incremental re-runs at scale", 10k pairs, 7k adapt images):
#: index 4.26 s / 10k pairs, pseudo 1.61 s and warp 0.34 s / 7k images. One process, CPU.
LABEL_CPU_PER_PAIR = 4.26 / 10_000 + (1.61 + 0.34) / 7_000
#: MEASURED (RESULTS.md, "what an increment still pays"): import torch + mmdet and build the
#: detector, ~4.5 s: paid once per Dask worker (one per GPU) per stage.
WORKER_START = 4.5
#: ASSUMED DDP scaling efficiency of training (YOLOX's own logs show sub-linear scaling; not measured
#: here): 0.9 on 4 GPUs of one node (NVLink), 0.8 on 16 GPUs over 4 nodes (network all-reduce).
SCALING = {1: 1.0, 4: 0.9, 16: 0.8}

SETUPS = {"1 GPU": 1, "1 node x 4 GPUs": 4, "4 nodes x 4 GPUs": 16}
#: MEASURED on this 2-core CPU, for scale: YOLOX-s training 27.35 s per batch-8 iteration at 416 px
#: (RESULTS.md "Detector training on synthetic RGB"), i.e. 3.4 s per image.
CPU_TRAIN_S = 27.3466 / 8


@dataclass(frozen=True)
class Row:
    stage: str
    where: str
    hours: dict[str, float]


def _sharded(images: int, per_image: float, gpus: int) -> float:
    """Seconds of a per-image stage sharded over ``gpus`` Dask workers (one per GPU)."""
    return images * per_image / gpus + WORKER_START


def rows(model: str) -> list[Row]:
    """The stages of one adaptation (teacher labels -> classical refine -> one student -> val + test eval).

    Args:
        model: ``YOLOX-s`` or ``YOLOX-x`` (teacher and student alike).

    Returns:
        One :class:`Row` per stage with hours per set-up in :data:`SETUPS`.
    """
    infer = INFER_GPU[model] + INFER_CPU_SIDE
    out = []
    for stage, where, fn in (
        ("index + pseudo + warp", "CPU, one process", lambda g: PAIRS * LABEL_CPU_PER_PAIR),
        ("infer (teacher on RGB adapt)", "GPU, Dask worker per GPU", lambda g: _sharded(ADAPT, infer, g)),
        ("refine, classical", "CPU, Dask worker per GPU", lambda g: _sharded(ADAPT, REFINE_CLASSICAL, g)),
        ("refine, SAM2 hiera-tiny (instead)", "GPU, Dask worker per GPU", lambda g: _sharded(ADAPT, SAM2_GPU, g)),
        (f"train student ({EPOCHS} epochs)", "GPU, torchrun (DDP)",
         lambda g: ADAPT * EPOCHS * TRAIN_GPU[model] / (g * SCALING[g])),
        (f"eval val + test ({EVAL_MODELS} models)", "GPU, Dask worker per GPU",
         lambda g: _sharded((VAL + TEST) * EVAL_MODELS, infer, g)),
    ):
        out.append(Row(stage, where, {name: fn(g) / 3600 for name, g in SETUPS.items()}))
    return out


def _fmt(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def table() -> str:
    """The README's Markdown table: hours per stage and in total (classical refine), per model and set-up."""
    head = "| stage | runs on | " + " | ".join(f"{m} {s}" for m in INFER_GPU for s in SETUPS) + " |"
    lines = [head, "|---|---|" + "---:|" * (len(INFER_GPU) * len(SETUPS))]
    per_model = {m: rows(m) for m in INFER_GPU}
    for k, r in enumerate(per_model["YOLOX-s"]):
        cells = [_fmt(per_model[m][k].hours[s]) for m in INFER_GPU for s in SETUPS]
        lines.append(f"| {r.stage} | {r.where} | " + " | ".join(cells) + " |")
    totals = [sum(r.hours[s] for r in per_model[m] if "SAM2" not in r.stage) for m in INFER_GPU for s in SETUPS]
    lines.append("| **total (classical refine)** | | " + " | ".join(f"**{_fmt(t)}**" for t in totals) + " |")
    return "\n".join(lines)


def main() -> None:
    print(f"FLIR-sized: {PAIRS} pairs ({ADAPT} adapt, {VAL} of them val, {TEST} test), {EPOCHS} epochs; hours")
    print(table())
    train = {m: ADAPT * EPOCHS * TRAIN_GPU[m] for m in TRAIN_GPU}
    print("\nshare of one GPU's total spent training: " + ", ".join(
        f"{m} {train[m] / 3600 / sum(r.hours['1 GPU'] for r in rows(m) if 'SAM2' not in r.stage):.0%}" for m in train))
    print(f"for scale, the YOLOX-s student on this 2-core CPU (measured, 416 px): {ADAPT * EPOCHS * CPU_TRAIN_S / 3600:.0f} h")


if __name__ == "__main__":
    main()
