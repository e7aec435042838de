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
