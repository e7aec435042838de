"""Stack self-check (``rgb2thermal doctor``): proves each real component runs here.

Every check builds or runs the real thing (no weights are downloaded: models get random
weights) and reports OK/FAIL with the reason, so a broken install is found in a minute
instead of an hour into a pipeline run.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ["torch", "torchvision", "mmengine", "mmcv", "mmdet", "sam2", "prefect", "dvc", "kornia",
            "pycocotools", "cv2", "optuna", "numpy", "pydantic"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float


def check_versions() -> str:
    from importlib.metadata import version, PackageNotFoundError

    dist = {"cv2": "opencv-python", "dvc": "dvc", "sam2": "sam2"}
    parts = []
    for mod in PACKAGES:
        importlib.import_module(mod)
        try:
            parts.append(f"{mod} {version(dist.get(mod, mod))}")
        except PackageNotFoundError:
            parts.append(f"{mod} {getattr(sys.modules[mod], '__version__', '?')}")
    return ", ".join(parts)


def check_device() -> str:
    """The device the stages' ``device: auto`` resolves to here, named with its memory.

    On a CUDA machine every visible GPU (``cuda:0 NVIDIA H100 80GB HBM3, 79.2 GiB``) and whether
    mmcv's ops have CUDA kernels: mmdet's YOLOX head calls mmcv's NMS, so without them inference and
    training on the GPU fail (the check FAILs, naming the fix). Without CUDA: core count and RAM.
    """
    import torch

    if not torch.cuda.is_available():
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return (f"cpu (no CUDA): {len(os.sched_getaffinity(0))} cores, {ram:.1f} GiB RAM; "
                f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none'}")
    gpus = "; ".join(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB"
                     for i, p in ((i, torch.cuda.get_device_properties(i)) for i in range(torch.cuda.device_count())))
    try:
        _mmcv_nms_on_cuda()
    except Exception as exc:  # a CPU-only build raises from its C++ dispatcher; any failure means the same here
        raise RuntimeError(f"{gpus}; mmcv's ops have NO CUDA kernels ({str(exc).splitlines()[0]}): detectors on "
                           "cuda fail at NMS; re-run scripts/setup_env.sh on this machine (builds them with "
                           "nvcc), or run with device: cpu") from None
    return f"{gpus} (torch CUDA {torch.version.cuda}); mmcv CUDA ops compiled (nms on cuda:0 correct)"


def _mmcv_nms_on_cuda() -> None:
    """mmcv's NMS on a CUDA tensor; RuntimeError when its ops were built without CUDA or answer wrongly."""
    import torch
    from mmcv.ops import nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32, device="cuda")
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7], device="cuda"), iou_threshold=0.5)
    if keep.tolist() != [0, 2] or keep.device.type != "cuda":
        raise RuntimeError(f"wrong result on cuda: keep={keep.tolist()} on {keep.device}")


def check_mmcv_ops() -> str:
    import torch
    from mmcv.ops import RoIAlign, batched_nms, nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    _, keep_b = batched_nms(boxes, scores, torch.tensor([0, 1, 0]), dict(type="nms", iou_threshold=0.5))
    roi = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=1)(
        torch.rand(1, 1, 8, 8), torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float32))
    if keep.tolist() != [0, 2] or len(keep_b) != 3 or tuple(roi.shape) != (1, 1, 2, 2):
        raise RuntimeError(f"wrong results: nms keep={keep.tolist()} batched={keep_b.tolist()} roi={tuple(roi.shape)}")
    return "nms, batched_nms, RoIAlign compiled and correct"


def check_yolox() -> str:
    import torch

    from detection.mmdet_utils import build_model, load_config

    cfg = load_config("yolox_tiny_8xb8-300e_coco")
    cfg.model.bbox_head.num_classes = 2
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        cls_scores, _, _ = model._forward(torch.rand(1, 3, 416, 416))
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    return (f"YOLOX-tiny (num_classes=2, random init, {n_params:.1f}M params) forward OK, "
            f"{len(cls_scores)} levels, cls map {tuple(cls_scores[0].shape)}")


def check_sam2() -> str:
    import numpy as np
    import torch
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
    predictor = SAM2ImagePredictor(model)
    image = (np.random.default_rng(0).random((512, 640, 3)) * 255).astype(np.uint8)
    predictor.set_image(image)
    boxes = np.array([[10, 10, 100, 120], [200, 150, 300, 400], [400, 50, 600, 200]], dtype=np.float32)
    masks, scores, _ = predictor.predict(box=boxes, multimask_output=False)
    if masks.shape != (3, 1, 512, 640):
        raise RuntimeError(f"unexpected mask shape {masks.shape}")
    return f"SAM2.1 hiera-tiny (random weights) batched 3 box prompts on 640x512 -> masks {masks.shape}"


_PREFECT_SNIPPET = textwrap.dedent("""
    from prefect import flow, task

    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def add(a: int, b: int) -> int:
        return a + b

    @flow(name="rgb2thermal-doctor")
    def two_tasks(x: int) -> int:
        return add(double(x), 1)

    assert two_tasks(20) == 41
    print("ok")
""")


def _isolated_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING", DVC_NO_ANALYTICS="1", DO_NOT_TRACK="1",
               # the default 20 s start budget is too short on a busy 2-core machine
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    return env


def check_prefect() -> str:
    """A two-task flow on a throwaway ephemeral Prefect server (own PREFECT_HOME)."""
    with tempfile.TemporaryDirectory(prefix="r2t-doctor-") as tmp:
        out = subprocess.run([sys.executable, "-c", _PREFECT_SNIPPET], env=_isolated_env(Path(tmp)),
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0 or "ok" not in out.stdout:
            raise RuntimeError((out.stderr or out.stdout).strip().splitlines()[-1] if (out.stderr or out.stdout) else "no output")
    import prefect

    return f"two-task flow ran on an ephemeral server (prefect {prefect.__version__})"


def check_dvc() -> str:
    """``dvc init`` + a one-stage ``dvc repro`` in a temp repo; the second repro must skip."""
    with tempfile.TemporaryDirectory(prefix="r2t-doctor-") as tmp:
        root = Path(tmp)
        env = _isolated_env(root)
        dvc = [sys.executable, "-m", "dvc"]

        def run(*args: str) -> str:
            out = subprocess.run([*dvc, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"dvc {' '.join(args)}: {(out.stderr or out.stdout).strip()}")
            return out.stdout

        run("init", "--no-scm", "-q")
        (root / "in.txt").write_text("hello\n")
        run("stage", "add", "-q", "-n", "copy", "-d", "in.txt", "-o", "out.txt", "cp in.txt out.txt")
        run("repro", "-q")
        second = run("repro")
        if (root / "out.txt").read_text() != "hello\n" or "didn't change" not in second:
            raise RuntimeError(f"unexpected repro behaviour: {second.strip()}")
    return "dvc init + repro in a temp repo; second repro skipped the unchanged stage"


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("versions", check_versions),
    ("device", check_device),
    ("mmcv ops", check_mmcv_ops),
    ("mmdet YOLOX", check_yolox),
    ("SAM2", check_sam2),
    ("prefect", check_prefect),
    ("dvc", check_dvc),
]


def run_checks(only: list[str] | None = None) -> list[CheckResult]:
    results = []
    for name, fn in CHECKS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            detail, ok = fn(), True
        except Exception as exc:  # a doctor reports every failure, it does not stop at the first
            last = traceback.extract_tb(exc.__traceback__)[-1]
            detail, ok = f"{type(exc).__name__}: {exc} (at {Path(last.filename).name}:{last.lineno})", False
        results.append(CheckResult(name, ok, detail, time.perf_counter() - t0))
    return results


def format_results(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'OK  ' if r.ok else 'FAIL'} {r.name:<{width}}  {r.detail}  [{r.seconds:.1f}s]" for r in results]
    bad = [r.name for r in results if not r.ok]
    lines.append("all checks passed" if not bad else f"{len(bad)} check(s) failed: {', '.join(bad)}")
    return "\n".join(lines)
