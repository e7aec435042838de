"""Trusted checkpoint loading is per call, so steps that load checkpoints at the same time (the
Prefect door runs independent steps in threads) cannot lend each other their trust.

The old design swapped ``torch.load`` process-wide while a step held a ``with`` block: a strict
load in another thread that fell inside that window went through the patched function and
unpickled what only the first step had trusted. Here one thread loads a full mmengine training
checkpoint by the trusted paths (``read_checkpoint``, mmengine with the training's trusted scheme)
while the other loads, by the strict paths (torch's default, mmengine's plain loader), a planted
pickle and that same training checkpoint; a barrier starts every iteration of both together.
"""
from __future__ import annotations

import pickle
import threading
from pathlib import Path

import pytest

ITERATIONS = 50


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code in a planted checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _run_together(*bodies) -> list[str]:
    """Run each ``body(i, wait)`` for ``ITERATIONS`` iterations in its own thread, every iteration
    released by one barrier; returns what went wrong (exceptions, as text)."""
    barrier = threading.Barrier(len(bodies))
    problems: list[str] = []

    def loop(body) -> None:
        try:
            for i in range(ITERATIONS):
                barrier.wait(timeout=60)
                body(i)
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:  # noqa: BLE001  (reported to the test thread below)
            problems.append(f"{type(exc).__name__}: {exc}")
            barrier.abort()

    threads = [threading.Thread(target=loop, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a loading thread hung"
    return problems


def test_concurrent_trusted_and_strict_loads_never_mix(tmp_path: Path) -> None:
    pytest.importorskip("mmengine")
    import torch
    from mmengine.logging import HistoryBuffer
    from mmengine.runner.checkpoint import CheckpointLoader

    from detection.checkpoints import read_checkpoint
    from tasks.train_hooks import trusted_checkpoint_uri

    original_load = torch.load
    trusted = tmp_path / "run" / "epoch_1.pth"     # what mmengine writes: HistoryBuffer etc. beside the weights
    trusted.parent.mkdir()
    torch.save({"meta": {"epoch": 1, "loss": HistoryBuffer([1.0, 2.0, 3.0])},
                "state_dict": {"w": torch.arange(4.0)}}, trusted)
    marker = tmp_path / "PAYLOAD_RAN"
    planted = tmp_path / "planted.pth"
    torch.save({"state_dict": {}, "meta": {"x": _Payload(marker)}}, planted)
    loaded: list[int] = []
    refused: list[str] = []

    def trusted_step(i: int) -> None:
        if i % 2:
            ck = CheckpointLoader.load_checkpoint(trusted_checkpoint_uri(trusted), map_location="cpu")
        else:
            ck = read_checkpoint(trusted)
        assert ck["meta"]["loss"].data[0].tolist() == [1.0, 2.0, 3.0], ck["meta"]
        assert torch.equal(ck["state_dict"]["w"], torch.arange(4.0))
        loaded.append(i)

    def strict_step(i: int) -> None:
        for f in (planted, trusted, planted, trusted):
            try:
                if i % 2:
                    torch.load(f, map_location="cpu")
                else:
                    CheckpointLoader.load_checkpoint(str(f), map_location="cpu")
            except pickle.UnpicklingError as exc:
                assert "Weights only load failed" in str(exc), exc
                refused.append(f.name)
            else:
                raise AssertionError(f"iteration {i}: a strict load unpickled {f.name} fully")

    problems = _run_together(trusted_step, strict_step)
    assert problems == []
    assert loaded == list(range(ITERATIONS))
    assert refused == ["planted.pth", "epoch_1.pth"] * 2 * ITERATIONS
    assert not marker.exists(), "the planted checkpoint's payload ran"
    assert torch.load is original_load
