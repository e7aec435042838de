"""Services that are not there: a Prefect API that does not answer, a DVC remote that cannot be
reached. Each ends in a clear message and an exit code, and leaves data and workspace as they were.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEAD = "http://127.0.0.1:9/api"         # port 9 (discard): nothing listens, connections are refused


def _tree(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def test_flows_with_an_unreachable_prefect_api_say_so_in_one_line(tmp_path: Path) -> None:
    """``python -m flows.adapt`` and ``flows.nightly`` with ``PREFECT_API_URL`` pointing at nothing:
    exit 1, one line naming the URL, PREFECT_API_URL and the plain door ``rgb2thermal run``; no
    traceback, no step run, no workspace written."""
    pytest.importorskip("prefect")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"synthetic": {"n_pairs": 4}},
                                                          "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco"}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=DEAD, PREFECT_HOME=str(tmp_path / "prefect_home"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    procs = {flow: subprocess.Popen([sys.executable, "-m", f"flows.{flow}", "--params", str(tmp_path / "params.yaml"),
                                     "--workspace", str(tmp_path / f"ws_{flow}")], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for flow in ("adapt", "nightly")}
    for flow, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 1, (flow, out, err[-3000:])
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in err, (flow, err[-3000:])
        assert DEAD in lines[0] and "PREFECT_API_URL" in lines[0] and "rgb2thermal run --params" in lines[0]
        assert not (tmp_path / f"ws_{flow}").exists(), flow


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).with_name("dvc")
    return subprocess.run([str(dvc), *args], cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})


def test_dvc_push_and_pull_with_an_unreachable_remote_fail_clearly_and_change_nothing(tmp_path: Path) -> None:
    """``dvc push`` / ``dvc pull`` against a remote that refuses connections: exit 1 with DVC's
    "failed to push / pull" and the host; the data folder, its ``.dvc`` pointer and a workspace
    beside it stay byte-identical; a pull of missing data leaves no partial folder. Recovery (as
    data/raw/README.md says): fix the remote and run the same command again."""
    if not Path(sys.executable).with_name("dvc").exists():
        pytest.skip("dvc is not installed beside this python")
    repo = tmp_path / "repo"
    (repo / "data" / "raw" / "v1").mkdir(parents=True)
    for i in range(3):
        (repo / "data" / "raw" / "v1" / f"f{i}.txt").write_text(f"frame {i}\n")
    (repo / "workspace" / "stages").mkdir(parents=True)
    (repo / "workspace" / "stages" / "x.json").write_text("{}\n")
    assert _dvc(repo, "init", "--no-scm", "-q").returncode == 0
    assert _dvc(repo, "add", "-q", "data/raw/v1").returncode == 0
    assert _dvc(repo, "remote", "add", "store", str(tmp_path / "store")).returncode == 0
    assert _dvc(repo, "push", "-r", "store").returncode == 0          # the data is safe in a good remote
    assert _dvc(repo, "remote", "add", "-d", "dead", DEAD.replace("/api", "/store")).returncode == 0
    before = {d: _tree(repo / d) for d in ("data", "workspace")}
    pointer = (repo / "data" / "raw" / "v1.dvc").read_text()

    push = _dvc(repo, "push")
    assert push.returncode == 1 and "failed to push" in push.stderr and "127.0.0.1:9" in push.stderr, push.stderr
    assert {d: _tree(repo / d) for d in ("data", "workspace")} == before

    shutil.rmtree(repo / "data" / "raw" / "v1")                       # a fresh clone: pointer only
    shutil.rmtree(repo / ".dvc" / "cache")
    pull = _dvc(repo, "pull")
    assert pull.returncode == 1 and "failed to pull" in pull.stderr, pull.stderr
    assert not (repo / "data" / "raw" / "v1").exists()                  # nothing partial
    assert _tree(repo / "workspace") == before["workspace"]
    assert (repo / "data" / "raw" / "v1.dvc").read_text() == pointer

    # recovery (data/raw/README.md): make a reachable remote the default and run the same command again
    assert _dvc(repo, "remote", "default", "store").returncode == 0
    assert _dvc(repo, "pull").returncode == 0
    assert {d: _tree(repo / d) for d in ("data", "workspace")} == before


def test_flow_clis_print_bad_input_and_a_full_disk_on_one_line(capsys) -> None:
    """The flow CLIs' body runs through ``flows.quiet.run_cli``, as ``rgb2thermal`` runs a command:
    InputError -> exit 2, ENOSPC / EROFS -> exit 1, each one line on stderr without a traceback;
    any other error keeps its traceback."""
    import argparse
    import errno

    pytest.importorskip("prefect")
    from core.errors import InputError
    from flows.quiet import run_cli

    args = argparse.Namespace(params="p.yaml", workspace="ws")

    def raising(exc: BaseException):
        def body() -> int:
            raise exc
        return body

    assert run_cli(raising(InputError("bad value", "params.yaml: x", "fix x")), args) == 2
    assert capsys.readouterr().err == "error: params.yaml: x: bad value. Fix: fix x\n"
    full = OSError(errno.ENOSPC, "No space left on device", "/w/stages/infer/.infer.json.ab12cd.tmp/infer.json")
    assert run_cli(raising(full), args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "disk full (ENOSPC) on /w/stages/infer/infer.json" in err
    assert run_cli(raising(OSError(errno.EROFS, "Read-only file system", "/w")), args) == 1
    assert "read-only file system (EROFS)" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):
        run_cli(raising(ZeroDivisionError("bug")), args)
    assert run_cli(lambda: 0, args) == 0
