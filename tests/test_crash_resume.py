"""Crash-resume, tested the way databases test it: SIGKILL a real pipeline run at seeded random
moments, resume it each time, and check that the final outputs are byte-identical to an
uninterrupted run's and that no reader could ever have seen a partial file.

The run is the plain CLI door (``python -m rgb2thermal_cli.main run``) in its own process group,
on the tiny generated scenario of ``tests/test_pipeline.py`` (10 pairs, the shared YOLOX-nano
teacher, 1-epoch students), one torch thread. One uninterrupted reference run gives the reference
hashes and each step's duration. Then two chains, each on a fresh workspace, kill a run once in
every step of the plan, in plan order: the run record shows when the step has begun (the step
before it is recorded as done), and a seeded RNG picks the moment within it (uniform over the first 60 %
of that step's reference duration). ``SIGKILL`` goes to the whole group, the workspace is scanned, and
the next run resumes in the same workspace. After a chain's last kill its run finishes and its
outputs are compared byte for byte with the reference. The step actually running at each kill is
read back from the killed run's record and printed (uniform delays over the whole run landed only
in the four long steps, infer, student, baseline and eval: data, index, teacher, warp, refine and
quality take milliseconds).

Deterministic by design (same bytes as the reference): every COCO file between stages, the eval
predictions, ``metrics.json`` and both slim checkpoints. One knob differs from the defaults:
``infer.batch_size: 1``. Detector scores depend on the batch composition in their 6th decimal
(docs/RELIABILITY.md, "recomputation matches only for the same batch"): a kill between two cache
writes of one batch makes the next run infer the rest of that batch in a smaller batch. With
batch size 1 every image is always inferred alone, so its bytes do not depend on where the kill
landed.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mmdet")

REPO = Path(__file__).resolve().parents[1]
NANO = REPO.parent / "shared" / "models" / "yolox-nano-coco"
needs_nano = pytest.mark.skipif(not (NANO / "yolox_nano_coco.pth").is_file(),
                                reason=f"shared YOLOX-nano teacher absent at {NANO}")

KILLS = 20
SEED = 13
STEPS = ["data", "index", "teacher", "infer", "pseudo", "warp", "refine", "student", "baseline", "quality", "eval"]
#: the outputs compared byte for byte with the uninterrupted run (relative to stages/)
COMPARED = ["index/versions/syn.json", "index/rgb_adapt.json", "index/thermal_test.json",
            "infer/infer.json", "pseudo/pseudo.json", "warp/warped.json", "refine/refined.json",
            "eval/predictions_adapted.json", "eval/predictions_no_refinement.json",
            "eval/predictions_source_only.json", "eval/metrics.json",
            "student/train/best_slim.pth", "baseline/train/best_slim.pth"]


def _setup(root: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import test_pipeline as tp
    finally:
        sys.path.pop(0)
    tp._folder(root, 10)
    params = tp._params(root)
    params["infer"]["batch_size"] = 1          # see the module docstring
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root / "params.yaml"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def _start(params: Path, ws: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "rgb2thermal_cli.main", "run", "--params", str(params),
                                 "--workspace", str(ws)], cwd=REPO, env=_env(), stdout=fh, stderr=fh,
                                start_new_session=True)


def _hashes(ws: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((ws / "stages" / rel).read_bytes()).hexdigest() for rel in COMPARED}


def _records(ws: Path) -> list[dict]:
    out = []
    for f in sorted((ws / "runs").glob("*/record.json")) if (ws / "runs").is_dir() else []:
        out.append(json.loads(f.read_text()))        # a torn record would raise here
    return sorted(out, key=lambda r: (r["started"], r["run_id"]))


def _running_step(ws: Path, before: set[str]) -> str:
    """The step the killed run was in: the first plan step its record does not list as done."""
    new = [r for r in _records(ws) if r["run_id"] not in before]
    if not new:
        return "(start-up: no run record yet)"
    done = {s["name"] for s in new[-1]["stages"]}
    return next((s for s in STEPS if s not in done), "(after eval: finishing the record)")


def _is_mmengine_log(path: Path, ws: Path) -> bool:
    """mmengine's run logs (``train/<YYYYMMDD_HHMMSS>/``: text log, JSON-lines scalars): append-only
    logs, read by no step, so a kill may cut their last line."""
    return any(re.fullmatch(r"\d{8}_\d{6}", p) for p in path.relative_to(ws).parts[:-1])


def _is_atomic_temp(path: Path, ws: Path) -> bool:
    """Inside one of core.atomic's hidden temporary folders (``.<name>.<random>.tmp/``)."""
    return any(p.startswith(".") and p.endswith(".tmp") for p in path.relative_to(ws).parts[:-1])


def _scan(ws: Path) -> dict[str, int]:
    """Every file a reader can see under its final name is whole: JSON parses, published
    checkpoints load under torch's strict default, every marker's outputs exist and load.
    Temporaries exist only inside core.atomic's hidden folders."""
    import torch

    seen = {"json": 0, "pth": 0, "markers": 0, "temps": 0}
    for f in ws.rglob("*"):
        if not f.is_file():
            continue
        if _is_mmengine_log(f, ws):
            continue
        if _is_atomic_temp(f, ws):
            seen["temps"] += 1
            continue
        assert not f.name.endswith((".tmp", ".part", "~")), f"stray temporary {f}"
        if f.suffix == ".json":
            json.loads(f.read_text())                 # raises on a partial file
            seen["json"] += 1
        elif f.suffix == ".pth":
            if f.name.startswith(("epoch_", "best_coco")):
                # mmengine's own checkpoints (resume state; trusted, not weights_only)
                from core.compat import load_trusted_checkpoint
                assert "state_dict" in load_trusted_checkpoint(f), f
            else:
                assert "state_dict" in torch.load(f, map_location="cpu", weights_only=True), f
            seen["pth"] += 1
    for marker in ws.glob("stages/*/stage.json"):
        m = json.loads(marker.read_text())
        for rel in m["files"].values():
            assert (marker.parent / rel).exists(), f"{marker} names a missing output {rel}"
        seen["markers"] += 1
    for r in _records(ws):
        assert r["status"] in ("running", "succeeded", "failed"), r["status"]
    return seen


#: planted credentials: in the environment of every run and in a DVC config inside the data root
SECRETS = {"PREFECT_API_KEY": "pnu_PLANTEDsecret0123456789abcdef", "AWS_SECRET_ACCESS_KEY": "PLANTED/aws+secret/0123",
           "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEY000000", "DVC_REMOTE_PASSWORD": "planted-dvc-password-0123"}


def _plant_dvc_config(data_root: Path) -> None:
    cfg = data_root / ".dvc" / "config.local"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("[core]\n    remote = store\n['remote \"store\"']\n    url = s3://bucket/rgb2thermal\n"
                   f"    access_key_id = {SECRETS['AWS_ACCESS_KEY_ID']}\n"
                   f"    secret_access_key = {SECRETS['AWS_SECRET_ACCESS_KEY']}\n"
                   f"    password = {SECRETS['DVC_REMOTE_PASSWORD']}\n")


def _tree(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def _leaked(ws: Path) -> list[str]:
    """Files of the workspace (run records, reports, logs, configs, checkpoints) holding a planted secret."""
    found = []
    for f in ws.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            found += [f"{f}: {k}" for k, v in SECRETS.items() if v.encode() in data]
    return found


def _step_seconds(ws: Path) -> dict[str, float]:
    return {s["name"]: float(s["seconds"]) for s in _records(ws)[-1]["stages"]}


def _wait_until_started(proc: subprocess.Popen, ws: Path, before: set[str], step: str, limit: float) -> None:
    """Return once this run's record shows that ``step`` has begun (the step before it is done),
    or when the run ends or ``limit`` seconds have passed."""
    prev = STEPS[STEPS.index(step) - 1] if STEPS.index(step) else None
    end = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < end:
        try:
            new = [r for r in _records(ws) if r["run_id"] not in before]
        except ValueError:
            new = []
        if new and (prev is None or prev in {s["name"] for s in new[-1]["stages"]}):
            return
        time.sleep(0.01)


@pytest.mark.slow
@needs_nano
def test_random_sigkills_resume_to_byte_identical_outputs(tmp_path: Path) -> None:
    """Two chains, each killing a fresh workspace once in every step of the plan, in plan order
    (22 kills): the step is found from the run record, the moment within it is a seeded random
    fraction of that step's duration in the reference run. After each kill the workspace is
    scanned (no partial file visible); after the last kill of a chain the run finishes and its
    outputs are compared byte for byte with the reference. Planted credentials never reach a
    file of the workspace, and the data root and registry are never written to."""
    params = _setup(tmp_path)
    _plant_dvc_config(tmp_path / "data")
    inputs_before = {d: _tree(tmp_path / d) for d in ("data", "registry")}
    log = tmp_path / "runs.log"
    t0 = time.monotonic()
    ref = _start(params, tmp_path / "ref", log)
    assert ref.wait(timeout=600) == 0, log.read_text()[-3000:]
    wall = time.monotonic() - t0
    reference = _hashes(tmp_path / "ref")
    durations = _step_seconds(tmp_path / "ref")

    rng = random.Random(SEED)
    kills: list[tuple[str, float, str]] = []        # (target step, delay in it, step the record shows)
    completed = compared = 0
    for chain in range(2):
        ws = tmp_path / f"ws{chain}"
        for target in STEPS:
            before = {r["run_id"] for r in _records(ws)}
            proc = _start(params, ws, log)
            try:
                _wait_until_started(proc, ws, before, target, limit=600)
                # within the first 60 % of the step's reference duration: a resumed step can run faster
                # (cache hits, less contention), and a later moment would land in the next step
                delay = rng.uniform(0.0, 0.6 * durations[target])
                time.sleep(delay)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
            kills.append((target, round(delay, 3), _running_step(ws, before)))
            _scan(ws)
        proc = _start(params, ws, log)
        assert proc.wait(timeout=600) == 0, f"the resumed run failed after kills {kills}:\n{log.read_text()[-3000:]}"
        _scan(ws)
        got = _hashes(ws)
        differ = [k for k in COMPARED if got[k] != reference[k]]
        assert not differ, f"outputs differ from the uninterrupted run after kills {kills}: {differ}"
        completed += 1
        compared += len(got)
        assert not _leaked(ws), _leaked(ws)
    assert not _leaked(tmp_path / "ref"), _leaked(tmp_path / "ref")
    assert {d: _tree(tmp_path / d) for d in ("data", "registry")} == inputs_before, "a run wrote into its inputs"
    hit = [k[2] for k in kills]
    print(f"\ncrash-resume: {len(kills)} kills survived, {completed} resumed runs completed, {compared} outputs "
          f"compared byte for byte (0 differ), reference wall {wall:.1f} s; kills (target, s into it, "
          f"step running): {kills}")
    assert len(kills) >= KILLS
    # measured: all 11 steps in most runs, 9 in one run on a loaded machine (a step that ran faster
    # than in the reference passed the kill on to the next step)
    assert len(set(hit) & set(STEPS)) >= 8, f"kills landed in too few steps: {sorted(set(hit))}"


# ------------------------------------------------------------------------------ champion promotion
#: a child that promotes champion after champion the way the nightly flow does (archive the
#: student's files, then ``promote``: history line, then pointer), forever, until it is killed
PROMOTER = """
import sys
from pathlib import Path
from core import atomic
from pipeline.champion import Champion, archive_model, load_champion, promote
ws, size = Path(sys.argv[1]), int(sys.argv[2])
champ = load_champion(ws)
i = int(champ.run_id[3:]) + 1 if champ else 0
student = ws / "stages" / "student"
print("ready", flush=True)
while True:
    atomic.write_bytes(student / "best_slim.pth", bytes([i % 251]) * size)
    atomic.write_text(student / "config.py", f"# model {i}\\n")
    model = archive_model(ws, f"run{i:04d}", {"config": str(student / "config.py"),
                                             "checkpoint": str(student / "best_slim.pth")})
    promote(ws, Champion(run_id=f"run{i:04d}", metric="adapted.all.mAP_50", value=i / 10000,
                         datasets={"syn": f"sha256:{i}"}, model=model))
    i += 1
"""


def test_a_kill_at_any_point_of_a_promotion_leaves_the_old_or_the_new_champion(tmp_path: Path) -> None:
    """SIGKILL a process promoting champions (the nightly flow's archive + promote sequence) at
    seeded random moments, 25 times: the pointer always loads, names the champion promoted last
    or the one being promoted, and its archived model is complete."""
    from pipeline.champion import load_champion, read_history

    size = 1 << 20            # a 1 MiB "checkpoint": copying it takes long enough to be hit by kills
    ws = tmp_path / "ws"
    rng = random.Random(SEED)
    previous = -1
    states = {"old": 0, "new": 0, "between history and pointer": 0}
    for _ in range(25):
        proc = subprocess.Popen([sys.executable, "-c", PROMOTER, str(ws), str(size)], cwd=REPO, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            assert proc.stdout.readline().strip() == b"ready", proc.stderr.read().decode()
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        champ = load_champion(ws)              # never raises: never a torn or malformed pointer
        history = read_history(ws)             # every line whole
        if champ is None:
            assert previous == -1 and len(history) <= 1
            continue
        current = int(champ.run_id[3:])
        assert current >= previous, "the pointer went back to an older champion"
        states["old" if current == previous else "new"] += 1
        # history is written first: it lists every champion once, in order, plus at most the one
        # whose promotion the kill cut between history and pointer (dropped by the next promotion)
        ids = [h["run_id"] for h in history]
        assert ids in ([f"run{i:04d}" for i in range(current + 1)], [f"run{i:04d}" for i in range(current + 2)]), ids
        states["between history and pointer"] += len(ids) == current + 2
        ckpt, cfg = Path(champ.model["checkpoint"]), Path(champ.model["config"])
        assert ckpt.read_bytes() == bytes([current % 251]) * size, "the champion's archived model is partial"
        assert cfg.read_text() == f"# model {current}\n"
        leftovers = [p for p in ws.rglob("*") if p.is_file() and not any(
            q.startswith(".") and q.endswith(".tmp") for q in p.relative_to(ws).parts[:-1])
            and p.name not in ("champion.json", "champion_history.jsonl", "best_slim.pth", "config.py")]
        assert not leftovers, leftovers
        previous = current
    assert previous >= 5, f"too few promotions between the kills to test anything ({previous + 1})"
    print(f"\nchampion kills: 25 survived, {previous + 1} promotions, pointer states after a kill: {states}")
