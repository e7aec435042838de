"""The CPU side of the GPU proof: ``scripts/gpu_check.sh`` and ``scripts/setup_env.sh`` parse, the GPU
check's dry run names its steps in order (and the timed round runs everything on cuda), and
``rgb2thermal doctor``'s device check names this CPU machine's cores and memory."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEP = r"^  (setup|doctor|gpu tests|round|record) "


@pytest.mark.parametrize("script", ["scripts/gpu_check.sh", "scripts/setup_env.sh"])
def test_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(REPO / script)], check=True)


def test_gpu_check_dry_run_prints_the_steps(tmp_path: Path) -> None:
    out = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--epochs", "3", "--shared", str(tmp_path),
                          "--out", str(tmp_path / "r.md")], capture_output=True, text=True, check=True).stdout
    steps = re.findall(STEP, out, flags=re.M)
    assert steps == ["setup", "doctor", "gpu tests", "round", "record"]
    round_line = next(line for line in out.splitlines() if line.startswith("  round"))
    assert f"--params {tmp_path}/models/yolox-nano-coco/params.msrs-bench.yaml" in round_line
    for s in ("infer.device=cuda", "student.train.device=cuda", "student.train.epochs=3", "self_training.rounds=1",
              r"eval.baselines=\[source_only\]"):
        assert f"--set {s}" in round_line
    assert "pytest -m gpu" in out and "doctor" in out
    assert not (tmp_path / "r.md").exists()           # a dry run writes nothing
    skip = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--skip-setup"],
                          capture_output=True, text=True, check=True).stdout
    assert re.findall(STEP, skip, flags=re.M) == ["doctor", "gpu tests", "round", "record"]


def test_doctor_names_the_cpu_with_its_cores_and_memory(capsys) -> None:
    from rgb2thermal_cli.main import main

    assert main(["doctor", "--only", "device"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert line.startswith(f"OK   device  cpu (no CUDA): {len(os.sched_getaffinity(0))} cores, {ram:.1f} GiB RAM; ")


def test_readme_scale_table_is_the_estimate_scripts_output() -> None:
    """The README's "Scale" hours come from ``benchmarks/scale_estimate.py`` (its inputs are stated there):
    a changed input without the README updated (or a hand-edited README) fails here."""
    from benchmarks.scale_estimate import table

    readme = (REPO / "README.md").read_text()
    assert table() in readme[readme.index("## Scale"):]
