"""Shared test fixtures: quiet, offline, CPU-only, isolated Prefect/DVC state."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Must be set before prefect is imported anywhere in the session.
_PREFECT_HOME = tempfile.mkdtemp(prefix="r2t-prefect-home-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from flows.quiet import apply_prefect_defaults  # noqa: E402

apply_prefect_defaults()   # the test session is an entry point too: the flows' quiet defaults, before prefect

import logging  # noqa: E402

import pytest  # noqa: E402


def _stream_of(handler: logging.Handler) -> object | None:
    """The stream a handler writes to (a rich console's file for Prefect's console handler)."""
    console = getattr(handler, "console", None)
    return getattr(console, "file", None) or getattr(handler, "stream", None)


@pytest.fixture(autouse=True)
def _drop_log_handlers_on_closed_streams():
    """After each test, remove logging handlers whose stream is closed.

    Why: Prefect (re)configures logging when a flow runs or a test harness starts, and its console
    handler on the root logger keeps the stream ``sys.stderr`` was at that moment: inside a test, that
    test's ``capsys`` stream, closed when the test ends. Every later WARNING of ours then printed a
    "--- Logging error ---" traceback into the next tests' stderr (and tests that assert no traceback
    failed, depending on test order). In a real process that stream is the terminal and never closes.
    """
    yield
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for lg in loggers:
        for h in list(lg.handlers):
            if getattr(_stream_of(h), "closed", False):
                lg.removeHandler(h)

def pytest_collection_modifyitems(config, items):
    """Skip the ``gpu``-marked tests where no CUDA device is visible (CPU machines, CI, and any session
    that left ``CUDA_VISIBLE_DEVICES`` to the empty default above)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    why = pytest.mark.skip(reason="no CUDA device visible (GPU tests run with one named: CUDA_VISIBLE_DEVICES=0 pytest -m gpu)")
    for item in gpu:
        item.add_marker(why)


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (starting one costs ~6 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture(scope="session")
def msrs20() -> Path:
    """The real 20-pair MSRS sample beside the repo; tests using it skip cleanly without it."""
    path = SHARED_DATA / "msrs-aligned-20"
    if not (path / "rgb").is_dir():
        pytest.skip(f"real sample data not found at {path} (it ships in ../shared/data beside the repo)")
    return path


NANO_TEACHER = REPO.parent / "shared" / "models" / "yolox-nano-coco"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core box: 2 torch threads thrash under load (measured ~2x slower).

    Use per module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def quick_prefect():
    """Prefect flow runs without the heartbeat thread (joining it costs ~1 s per flow run) and with
    one torch thread. Use together with ``prefect_harness``."""
    import torch
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> tuple[Path, Path]:
    """A small real YOLOX (random weights, calibrated to emit a few boxes) with a 128 px test
    pipeline: ``(config, checkpoint)`` (``benchmarks.label_transfer_infer.make_tiny_detector``)."""
    from benchmarks.label_transfer_infer import make_tiny_detector

    return make_tiny_detector(tmp_path_factory.mktemp("det"), scale=128)


def thermal_gt(root: Path, n: int, seed: int, name: str) -> Path:
    """``n`` generated pairs under ``root`` and their thermal ground truth at ``root/name`` with absolute
    ``file_name``s, as the pipeline's index writes it."""
    from core.coco import load_dataset, save_dataset
    from data.synthetic import generate

    generate(root, n, seed=seed, progress=False)
    gt = load_dataset(root / "labels_thermal" / "coco.json")
    for im in gt["images"]:
        im["file_name"] = str(root / "thermal" / Path(im["file_name"]).name)
    return save_dataset(root / name, gt)
