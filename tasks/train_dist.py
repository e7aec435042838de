"""Training in several processes: torchrun + mmengine's ``launcher='pytorch'`` (DDP).

Why a separate process tree: DDP needs one process per GPU (or, on CPU, per share of the cores),
each with its rank in the environment, which is what ``torchrun`` (``torch.distributed.run``)
starts and supervises. The calling process (the pipeline, ``rgb2thermal train``) stays a plain
single process: :func:`tasks.train.train` prepares ``config.py`` (and the initial weights or the
checkpoint to resume from) as for one process, then :func:`launch` runs

    python -m tasks.train_dist torchrun [--standalone | --nnodes M --node_rank 0 --master_addr A
        --master_port P] --nproc_per_node N -m tasks.train_dist rank <work_dir>/config.py

waits, and hands back what rank 0 recorded (:class:`tasks.train.RankRun`, ``rank0_run.json``),
which ``train`` records exactly as the one-process path does. Each rank builds mmengine's Runner
from that ``config.py`` (``launcher='pytorch'``, ``model_wrapper_cfg`` = MMDistributedDataParallel,
backend ``gloo`` on CPU, ``nccl`` on CUDA: :func:`detection.train_config.build_config`). mmengine
saves checkpoints from rank 0 only, from the unwrapped module (no ``module.`` prefix), so they load
in the one-process path; resume reads the last epoch checkpoint on every rank.

Dying together: torchrun starts its workers in sessions of their own, so a kill of the caller's
process group would leave them training (and writing checkpoints) beside a resumed run. Both the
torchrun agent and each worker therefore ask Linux to SIGKILL them when their parent dies
(``PR_SET_PDEATHSIG``): killing the caller's group, or the caller alone, ends the whole tree.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import atomic
from core.errors import InputError

if TYPE_CHECKING:
    from detection.train_spec import TrainSpec
    from tasks.train import RankRun

log = logging.getLogger(__name__)

#: what rank 0 records for the launching process (epochs, iteration times, validation history)
RANK0_RUN = "rank0_run.json"
#: an InputError raised in a rank (a NaN loss, ...), re-raised by the launching process
WORKER_ERROR = "worker_error.json"
DEFAULT_MASTER_PORT = 29500
_REPO = Path(__file__).resolve().parents[1]


def torchrun_command(spec: TrainSpec, config_path: Path, *, node_rank: int = 0, log_level: str = "WARNING") -> list[str]:
    """The command that trains ``config_path`` with ``spec.gpus`` processes on node ``node_rank``.

    One node: ``--standalone`` (torchrun picks a free rendezvous port on localhost). Several:
    static rendezvous at ``spec.master_addr:spec.master_port`` (default 29500), node 0 being the
    machine that runs the pipeline.

    Args:
        spec: the training spec (``gpus``, ``nnodes``, ``master_addr``, ``master_port``).
        config_path: the run's resolved ``config.py`` (absolute; the same path on every node).
        node_rank: this machine's node index, ``0 <= node_rank < spec.nnodes``.
        log_level: mmengine's console log level in the ranks.

    Returns:
        The argument list (``sys.executable`` first).
    """
    if spec.nnodes == 1:
        rendezvous = ["--standalone"]
    else:
        assert spec.master_addr is not None
        rendezvous = ["--nnodes", str(spec.nnodes), "--node_rank", str(node_rank), "--master_addr",
                      spec.master_addr, "--master_port", str(spec.master_port or DEFAULT_MASTER_PORT)]
    return [sys.executable, "-m", "tasks.train_dist", "torchrun", *rendezvous, "--nproc_per_node", str(spec.gpus),
            "-m", "tasks.train_dist", "rank", str(Path(config_path).resolve()), "--log-level", log_level]


def _child_env(spec: TrainSpec, device: str) -> dict[str, str]:
    """The environment of the torchrun tree (this process's own is left alone): the repository on
    ``PYTHONPATH`` (ranks import ``tasks.train_hooks``); on CPU no visible GPU (mmengine puts the
    model on ``get_device()``, a GPU whenever one is visible); and unless set, OpenMP threads = the
    cores shared out between the ranks (torchrun would otherwise set 1, with a warning)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if not device.startswith("cuda"):
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // spec.gpus)))
    return env


def launch(spec: TrainSpec, config_path: Path, work_dir: Path, *, device: str, log_level: str) -> RankRun:
    """Train ``config_path`` under torchrun as node 0 and return what rank 0 recorded.

    With ``spec.nnodes > 1`` the other nodes must run :func:`torchrun_command` with their own
    ``node_rank`` (logged here at WARNING, as the user has to act); the run waits for them.

    Args:
        spec: the training spec (process counts and rendezvous).
        config_path: the run's resolved ``config.py``.
        work_dir: the run's folder (``rank0_run.json``, ``worker_error.json``).
        device: the resolved device (``cpu`` or ``cuda[:N]``).
        log_level: mmengine's console log level in the ranks.

    Returns:
        Rank 0's :class:`tasks.train.RankRun`.

    Raises:
        InputError: a rank raised one (e.g. :class:`tasks.train_hooks.NonFiniteLossError`).
        RuntimeError: torchrun failed otherwise, or rank 0 recorded nothing.
    """
    from tasks.train import RankRun

    _check_gpus(spec, device)
    for stale in (work_dir / RANK0_RUN, work_dir / WORKER_ERROR):
        stale.unlink(missing_ok=True)
    cmd = torchrun_command(spec, config_path, log_level=log_level)
    if spec.nnodes > 1:
        other = torchrun_command(spec, config_path, node_rank=1, log_level=log_level)
        other[other.index("--node_rank") + 1] = "<k>"
        log.warning("training on %d nodes: this machine is node 0 and waits for the others; on node k = 1..%d "
                    "run (workspace and datasets at the same paths): PYTHONPATH=%s %s", spec.nnodes,
                    spec.nnodes - 1, _REPO, shlex.join(other))
    log.info("training with %d processes: %s", spec.world_size, shlex.join(cmd))
    rc = subprocess.run(cmd, env=_child_env(spec, device), check=False).returncode
    if rc != 0:
        _raise_rank_failure(work_dir, rc)
    if not (work_dir / RANK0_RUN).is_file():
        raise RuntimeError(f"torchrun exited 0 but rank 0 recorded nothing ({work_dir / RANK0_RUN})")
    return RankRun.from_json(atomic.read_json(work_dir / RANK0_RUN))


def _check_gpus(spec: TrainSpec, device: str) -> None:
    """On CUDA every process needs a GPU of its own (nccl refuses two ranks on one device)."""
    if device.startswith("cuda"):
        import torch

        have = torch.cuda.device_count()
        if have < spec.gpus:
            raise InputError(f"gpus={spec.gpus} processes on CUDA need {spec.gpus} GPUs; this machine has {have}",
                             "gpus", f"set gpus to at most {have}")


def _raise_rank_failure(work_dir: Path, rc: int) -> None:
    """Re-raise the InputError a rank recorded, else a RuntimeError naming torchrun's exit status."""
    from tasks.train_hooks import NonFiniteLossError

    path = work_dir / WORKER_ERROR
    if path.is_file():
        e = atomic.read_json(path)
        if e.get("type") == "NonFiniteLossError":
            a = e["args"]
            raise NonFiniteLossError(a["loss_name"], float("nan") if a["value"] is None else a["value"],
                                     a["iteration"], a["epoch"], a["lr"])
        raise InputError(e["what"], e.get("where"), e.get("fix"))
    raise RuntimeError(f"distributed training failed (torchrun exit status {rc}); the ranks' tracebacks are "
                       f"printed above, mmengine's logs are under {work_dir}")


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (see the module docstring)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


def _init_process_group(backend: str) -> None:
    """On CPU, join the gloo process group before mmengine does: mmengine's ``_init_dist_pytorch``
    calls ``torch.cuda.set_device(LOCAL_RANK)`` first, which raises on a machine without a GPU. The
    Runner then finds the group initialised and uses it. On CUDA mmengine initialises nccl itself."""
    import torch.distributed as dist

    if backend == "gloo" and not dist.is_initialized():
        dist.init_process_group("gloo")     # env:// rendezvous: RANK, WORLD_SIZE, MASTER_ADDR/PORT from torchrun


def _record_error(work_dir: Path, exc: InputError) -> None:
    from tasks.train_hooks import NonFiniteLossError

    e: dict[str, Any] = {"type": type(exc).__name__, "what": exc.what, "where": exc.where, "fix": exc.fix}
    if isinstance(exc, NonFiniteLossError):
        e["args"] = {"loss_name": exc.loss_name, "value": exc.value, "iteration": exc.iteration,
                     "epoch": exc.epoch, "lr": exc.lr}
    atomic.write_json(work_dir / WORKER_ERROR, e)


def run_rank(config_path: Path, log_level: str) -> None:
    """One rank of a torchrun training: mmengine's Runner from ``config_path`` (``launcher='pytorch'``),
    trained; rank 0 then writes :data:`RANK0_RUN` for the launching process.

    Args:
        config_path: the run's resolved ``config.py`` (written by :func:`tasks.train.train`).
        log_level: mmengine's console log level.
    """
    import torch.distributed as dist
    from mmengine.config import Config

    from tasks.train import RankRun, _run

    cfg = Config.fromfile(str(config_path), format_python_code=False)
    cfg.log_level = log_level
    work_dir = Path(cfg.work_dir)
    backend = cfg.env_cfg.dist_cfg.backend
    _init_process_group(backend)
    try:
        runner, progress = _run(cfg, work_dir)
    except InputError as exc:
        _record_error(work_dir, exc)
        raise
    if dist.get_rank() == 0:
        run = RankRun(epochs_run=int(runner.epoch), iter_seconds=progress.iter_seconds,
                      val_history=progress.val_history, processes=dist.get_world_size(), backend=backend)
        atomic.write_json(work_dir / RANK0_RUN, run.to_json())
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``torchrun <torchrun args>`` (the agent, dying with its parent) or
    ``rank <config.py> --log-level L`` (one rank, started by the agent)."""
    import argparse

    args = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    if args[:1] == ["torchrun"]:
        from torch.distributed.run import main as torchrun_main

        torchrun_main(args[1:])
        return
    p = argparse.ArgumentParser(prog="python -m tasks.train_dist rank")
    p.add_argument("mode", choices=["rank"])
    p.add_argument("config", type=Path)
    p.add_argument("--log-level", default="WARNING")
    ns = p.parse_args(args)
    from torch.distributed.elastic.multiprocessing.errors import record

    record(run_rank)(ns.config, ns.log_level)


if __name__ == "__main__":
    main()
