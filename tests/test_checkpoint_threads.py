"""Trusted checkpoint loading is per call, so steps that load checkpoints at the same time (the
Prefect door runs independent steps in threads) cannot lend each other their trust.

The old design swapped ``torch.load`` process-wide while a step held a ``with`` block: a strict
load in another thread that fell inside that window went through the patched function and
unpickled what only the first step had trusted. Here one thread loads a full mmengine training
checkpoint by the trusted paths (``read_checkpoint``, mmengine with the training's trusted scheme)
while the other loads, by the strict paths (torch's default, mmengine's plain loader), a planted
pickle and that same training checkpoint, over and over until the trusted load of that iteration
has finished; a barrier starts every iteration of both together. The training checkpoint holds
800 tensors, like a detector's state dict: unpickling them runs Python code per tensor, where
threads switch, so the strict loads fall inside the trusted load (against the old design this test
failed in every run tried, 57-65 of ~150 strict loads unpickling the training checkpoint fully).
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
    """Run each ``body(i)`` for ``ITERATIONS`` iterations in its own thread, every iteration
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
    state = {"w": torch.arange(4.0), **{f"layer{k}.weight": torch.full((8,), float(k)) for k in range(800)}}
    torch.save({"meta": {"epoch": 1, "loss": HistoryBuffer([1.0, 2.0, 3.0], [1, 1, 1])}, "state_dict": state}, trusted)
    marker = tmp_path / "PAYLOAD_RAN"
    planted = tmp_path / "planted.pth"
    torch.save({"state_dict": {}, "meta": {"x": _Payload(marker)}}, planted)
    loaded: list[int] = []
    refused: list[str] = []
    attempts: list[str] = []
    done = [threading.Event() for _ in range(ITERATIONS)]

    def trusted_step(i: int) -> None:
        try:
            if i % 2:
                ck = CheckpointLoader.load_checkpoint(trusted_checkpoint_uri(trusted), map_location="cpu")
            else:
                ck = read_checkpoint(trusted)
        finally:
            done[i].set()
        assert ck["meta"]["loss"].data[0].tolist() == [1.0, 2.0, 3.0], ck["meta"]
        assert torch.equal(ck["state_dict"]["w"], torch.arange(4.0)) and len(ck["state_dict"]) == 801
        loaded.append(i)

    def strict_step(i: int) -> None:
        rounds = 0
        while rounds < 2 or not done[i].is_set():      # strict loads all through the trusted one
            rounds += 1
            for f in (planted, trusted):
                attempts.append(f.name)
                _strict_load(i, f)

    def _strict_load(i: int, f: Path) -> None:
        try:
            if i % 2:
                torch.load(f, map_location="cpu")
            else:
                CheckpointLoader.load_checkpoint(str(f), map_location="cpu")     # a Runner's plain load_from
        except pickle.UnpicklingError as exc:
            assert "Weights only load failed" in str(exc), exc
            refused.append(f.name)
        else:
            raise AssertionError(f"iteration {i}: a strict load unpickled {f.name} fully")

    problems = _run_together(trusted_step, strict_step)
    assert problems == []
    assert loaded == list(range(ITERATIONS))
    assert len(attempts) >= 4 * ITERATIONS and refused == attempts     # every strict load refused
    assert not marker.exists(), "the planted checkpoint's payload ran"
    assert torch.load is original_load
