"""The Prefect doors that leave the test process: the committed ``prefect.yaml`` deploys (real
``prefect deploy``) and a process worker runs it, and ``rgb2thermal serve`` really serves (a run
triggered through the API is executed by the served process).

Everything runs against the session's temporary Prefect server (``prefect_harness``); the CLI
subprocesses reach it through ``PREFECT_API_URL``. The triggered nightly runs finish in seconds
legitimately: their workspace holds a champion promoted on exactly the watched (synthetic) data,
so the flow decides "no change" without training, and writes its report; that report and the
COMPLETED state prove the served/worker process ran the flow.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

BIN = Path(sys.executable).parent
NIGHTLY_FLOW = "rgb2thermal-nightly"
ADAPT_FLOW = "rgb2thermal-adapt"
POOL = "rgb2thermal"
# validates, and its watched data (synthetic: fingerprinted by its spec) costs nothing to fingerprint
TINY_PARAMS = {"data": {"synthetic": {"n_pairs": 4, "seed": 1}, "val_fraction": 0.25},
               "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco", "epochs": 1}}}


def _env(**extra: str) -> dict[str, str]:
    """The test process's environment plus the harness server's URL (set only inside the harness)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness is not active"
    return {**os.environ, "PREFECT_API_URL": url, **extra}


def _cli(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 90) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _no_change_workspace(root: Path, ws_name: str = "ws") -> tuple[Path, Path]:
    """``root/params.yaml`` and ``root/<ws_name>``, whose champion was promoted on exactly these datasets."""
    from pipeline.champion import DEFAULT_METRIC, Champion, promote, watched_fingerprints
    from pipeline.params import load_params

    params_file = root / "params.yaml"
    params_file.write_text(json.dumps(TINY_PARAMS))                  # JSON is YAML
    ws = root / ws_name
    fps = watched_fingerprints(load_params(params_file))
    promote(ws, Champion(run_id="r-test", metric=DEFAULT_METRIC, value=0.5, datasets=fps))
    return params_file, ws


def _wait_final(client: Any, flow_run_id: Any, timeout: float, proc: subprocess.Popen | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the serving process exited ({proc.returncode}) before the run finished")
        time.sleep(0.5)
    pytest.fail(f"flow run {flow_run_id} did not finish within {timeout} s (last state: {run.state})")


def _stop(proc: subprocess.Popen, log: Path, timeout: float = 60) -> int:
    """SIGINT (what Ctrl-C sends: the documented way to stop ``rgb2thermal serve``), a second one after
    ``timeout / 2`` s if the process still runs, and wait up to ``timeout`` s in all for the exit code.
    A process still running then fails the test, after SIGABRT has made it write every thread's stack
    into ``log`` (the process runs with PYTHONFAULTHANDLER=1), so the failure shows what the shutdown
    waited on."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=timeout / 2)
        except subprocess.TimeoutExpired:
            # a second Ctrl-C, as a user presses it. Since 2026-12-06 evening serve's own SIGINT handler
            # (serve.bounded_shutdown) ends the process 20 s after the first, so this should not be needed
            warnings.warn("serve outlived the first SIGINT by 30 s: a second SIGINT sent", RuntimeWarning, stacklevel=2)
            proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=timeout / 2)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            _kill_group(proc)
            pytest.fail(f"serve did not exit within {timeout:.0f} s of two SIGINTs; its log with the threads' stacks "
                        f"(faulthandler, on SIGABRT):\n{log.read_text()[-12000:]}")
    return proc.returncode


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill what is left of the process group (the process and any flow-run subprocess it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# ------------------------------------------------------------------------------ committed prefect.yaml
def _deploy(flow: str, name: str, env: dict[str, str]) -> str:
    """``prefect --no-prompt deploy --name NAME`` from the repository root (where prefect.yaml is).

    Known stack bug, tolerated only in this exact form: after saving the deployment, prefect 3.8.8's
    CLI asks the server for the pool's online workers with ``"limit": null, "offset": null``;
    fastapi 0.154.0 (our pin) rejects explicit nulls for those int bodies (422; fastapi 0.142.2
    substitutes the defaults), so the command exits 1 although the deployment exists. With
    ``--all`` that error also stops the remaining deployments, hence one command per deployment.
    The deployments themselves are checked through the API by the tests.
    """
    args = [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", name]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        flat = " ".join(out.replace("\u2502", " ").split())          # rich wraps its panels in boxes
        saved = f"Deployment '{flow}/{name}' successfully created" in flat
        known = "422 Unprocessable Entity" in flat and "/workers/filter" in flat
        assert saved and known, f"{' '.join(args)} failed ({proc.returncode}):\n{out}"
        warnings.warn(f"prefect deploy --name {name}: deployment saved, then the known 422 from "
                      "fastapi 0.154 on /work_pools/.../workers/filter (exit 1)", RuntimeWarning, stacklevel=1)
    return out


@pytest.fixture(scope="module")
def deployed(prefect_harness) -> dict[str, Any]:
    """The README's team-server commands, for real: create the work pool, deploy each deployment."""
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.orchestration import get_client

    # `prefect deploy` only prints a warning and skips a file that fails its schema: check it strictly
    PrefectYamlModel.model_validate(yaml.safe_load((REPO / "prefect.yaml").read_text()))
    env = _env()
    _cli([str(BIN / "prefect"), "--no-prompt", "work-pool", "create", POOL, "--type", "process"], cwd=REPO, env=env)
    out = "".join(_deploy(flow, name, env) for flow, name in ((NIGHTLY_FLOW, "nightly"), (ADAPT_FLOW, "adapt")))
    with get_client(sync_client=True) as client:
        deps = {name: client.read_deployment_by_name(f"{flow}/{name}")
                for flow, name in ((NIGHTLY_FLOW, "nightly"), (ADAPT_FLOW, "adapt"))}
        flows = {name: client.read_flow(d.flow_id).name for name, d in deps.items()}
    return {"deployments": deps, "flows": flows, "output": out}


def test_prefect_yaml_deploys_nightly_with_cron_and_adapt_on_demand(deployed) -> None:
    nightly, adapt = deployed["deployments"]["nightly"], deployed["deployments"]["adapt"]
    assert deployed["flows"] == {"nightly": NIGHTLY_FLOW, "adapt": ADAPT_FLOW}
    assert nightly.entrypoint == "flows/nightly.py:nightly_flow" and adapt.entrypoint == "flows/adapt.py:adapt_flow"
    assert nightly.work_pool_name == POOL and adapt.work_pool_name == POOL
    (sched,) = nightly.schedules
    assert sched.schedule.cron == "0 2 * * *" and sched.schedule.timezone == "UTC" and sched.active
    assert adapt.schedules == []
    # one night at a time (RELIABILITY.md, two scheduled nights)
    assert nightly.concurrency_limit == 1 or getattr(nightly.global_concurrency_limit, "limit", None) == 1
    assert nightly.parameters == {"params_path": "params.yaml", "workspace": "workspace",
                                  "metric": "adapted.all.mAP_50", "min_improvement": 0.0,
                                  "overrides": ["data.val_fraction=0.2"]}
    assert adapt.parameters == {"params_path": "params.yaml", "workspace": "workspace"}
    # the declared parameters are the flows' own (the schema is built from the signatures)
    for dep in (nightly, adapt):
        assert set(dep.parameters) <= set(dep.parameter_openapi_schema["properties"])
    # the checkout is found on the worker at run time: the placeholder must survive deployment
    expected_pull = [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $RGB2THERMAL_REPO }}"}}]
    assert nightly.pull_steps == expected_pull and adapt.pull_steps == expected_pull


def test_worker_runs_the_deployed_nightly_flow(deployed, tmp_path: Path) -> None:
    """``prefect deployment run`` (README command, default parameters) + a process worker started
    elsewhere: the pull step changes into $RGB2THERMAL_REPO, so the deployment's relative
    ``params.yaml`` and ``workspace`` are that checkout's (here a stand-in checkout: the real
    ``flows/`` plus a tiny params.yaml and a workspace whose champion makes the night "no change")."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "flows").symlink_to(REPO / "flows")
    _, ws = _no_change_workspace(checkout, "workspace")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(RGB2THERMAL_REPO=str(checkout))
    nightly = deployed["deployments"]["nightly"]
    _cli([str(BIN / "prefect"), "--no-prompt", "deployment", "run", f"{NIGHTLY_FLOW}/nightly"], cwd=elsewhere, env=env)
    with get_client(sync_client=True) as client:
        # explicit limit and sort: fastapi 0.154 rejects the nulls the client sends for them otherwise
        (run,) = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])),
                                       limit=10, sort=FlowRunSort.ID_DESC)
    worker = subprocess.Popen([str(BIN / "prefect"), "--no-prompt", "worker", "start", "--pool", POOL, "--run-once"],
                              cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        out, _ = worker.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not finish its one poll within 90 s")
    finally:
        _kill_group(worker)
    with get_client(sync_client=True) as client:
        final = _wait_final(client, run.id, 10)
    assert final.state.is_completed(), f"{final.state}\n{out}"
    (report,) = (ws / "nightly").glob("*.md")
    assert "no change" in report.read_text()
    assert not (elsewhere / "workspace").exists()


# ------------------------------------------------------------------------------- rgb2thermal serve
def test_serve_loop_registers_the_schedule_and_runs_a_triggered_night(prefect_harness, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    params_file, ws = _no_change_workspace(tmp_path)
    name = f"{NIGHTLY_FLOW}/nightly-test"
    log = tmp_path / "serve.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [str(BIN / "rgb2thermal"), "serve", "--params", str(params_file), "--workspace", str(ws),
             "--cron", "0 3 * * *", "--timezone", "Europe/Berlin", "--name", "nightly-test"],
            cwd=tmp_path, env=_env(PREFECT_RUNNER_POLL_FREQUENCY="1", PYTHONFAULTHANDLER="1"), stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            dep, deadline = None, time.monotonic() + 60
            while dep is None and time.monotonic() < deadline:
                assert proc.poll() is None, f"serve exited ({proc.returncode}):\n{log.read_text()}"
                try:
                    dep = client.read_deployment_by_name(name)
                except ObjectNotFound:
                    time.sleep(0.5)
            assert dep is not None, f"{name} was not registered within 60 s:\n{log.read_text()}"
            (sched,) = dep.schedules
            assert sched.schedule.cron == "0 3 * * *" and sched.schedule.timezone == "Europe/Berlin"
            assert dep.parameters["workspace"] == str(ws.resolve())

            run = client.create_flow_run_from_deployment(dep.id)
            final = _wait_final(client, run.id, 60, proc)
        assert final.state.is_completed(), f"{final.state}\n{log.read_text()}"
        (report,) = (ws / "nightly").glob("*.md")
        assert "no change" in report.read_text()
        # Ctrl-C stops the loop: exit code 0 (Prefect's serve catches KeyboardInterrupt), 130 or -SIGINT
        assert _stop(proc, log) in (0, 130, -signal.SIGINT), log.read_text()
    finally:
        _kill_group(proc)


def test_serve_ends_itself_when_a_shutdown_outlives_the_grace_after_ctrl_c(tmp_path: Path) -> None:
    """``rgb2thermal serve``'s SIGINT handler (:func:`rgb2thermal_cli.serve.bounded_shutdown`): Ctrl-C
    interrupts as usual, and a process whose shutdown then hangs (here: a loop that swallows every
    KeyboardInterrupt, as a stuck shutdown would) is ended 1 s later with exit code 130 and a warning."""
    # 'ready' is printed inside the try, and the sleep loop is inside it too, so the one SIGINT is caught
    # wherever it lands. (A loop with the try around the sleep alone let a SIGINT that landed on the
    # loop's back-jump escape on a loaded CI machine: the uncaught KeyboardInterrupt ended it, exit -2.)
    code = ("import signal, time\n"
            "from rgb2thermal_cli.serve import bounded_shutdown\n"
            "signal.signal(signal.SIGINT, bounded_shutdown(1.0))\n"
            "said = False\n"
            "while True:\n"
            "    try:\n"
            "        if not said:\n"
            "            said = True\n"
            "            print('ready', flush=True)\n"
            "        while True:\n"
            "            time.sleep(0.05)\n"
            "    except KeyboardInterrupt:\n"
            "        print('interrupted', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        _kill_group(proc)
    assert proc.returncode == 130
    assert out.strip() == "interrupted"                  # the first Ctrl-C still raised KeyboardInterrupt
    assert "shutdown did not finish within 1 s of Ctrl-C; exiting now (code 130)" in err
