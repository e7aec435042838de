"""The Prefect flow runs the same steps as the plain pipeline and produces the same outputs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_pipeline import _folder, _params, needs_nano

pytest.importorskip("prefect")
pytest.importorskip("mmdet")


pytestmark = pytest.mark.usefixtures("quick_prefect")


@needs_nano
def test_flow_matches_plain_pipeline(tmp_path: Path, prefect_harness) -> None:
    from flows.adapt import METRICS_ARTIFACT, QUALITY_ARTIFACT, adapt_flow
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict

    _folder(tmp_path, 8)
    params = _params(tmp_path)
    params["eval"] = {"baselines": ["source_only"]}          # one student training is enough here
    record = adapt_flow(params_path=None, workspace=str(tmp_path / "ws_flow"), params=params)
    assert record["status"] == "succeeded" and record["flow"] == "prefect-adapt"
    names = [s["name"] for s in record["stages"]]
    assert names == ["data", "index", "teacher", "infer", "pseudo", "warp", "refine", "student", "quality", "eval"]

    plain = run_pipeline(params_from_dict(params), tmp_path / "ws_plain")
    assert [s.name for s in plain.stages] == names
    for rel in ("infer/infer.json", "pseudo/pseudo.json", "warp/warped.json", "refine/refined.json",
                "quality/quality/quality.json"):
        flow_text = (tmp_path / "ws_flow" / "stages" / rel).read_text().replace("ws_flow", "WS")
        plain_text = (tmp_path / "ws_plain" / "stages" / rel).read_text().replace("ws_plain", "WS")
        assert flow_text == plain_text, rel
    assert record["metrics"]["eval"]["source_only"] == plain.metrics["eval"]["source_only"]
    # in two different workspace folders the trained weights and the metrics are byte-identical:
    # no output depends on where the workspace is
    for rel in ("student/train/best_slim.pth", "student/model.json", "eval/metrics.json"):
        assert (tmp_path / "ws_flow" / "stages" / rel).read_bytes() == (tmp_path / "ws_plain" / "stages" / rel).read_bytes(), rel

    # the plain pipeline on the flow's workspace finds every step current: same keys, same outputs
    again = run_pipeline(params_from_dict(params), tmp_path / "ws_flow")
    assert all(s.reused for s in again.stages)

    # a second flow run reuses every step, and Prefect shows it: each task ends in state "Reused"
    from prefect.client.orchestration import get_client

    state = adapt_flow(params_path=None, workspace=str(tmp_path / "ws_flow"), params=params, return_state=True)
    assert all(s["reused"] for s in state.result()["stages"])
    import time

    deadline = time.time() + 30          # task run states reach the server through events: poll
    with get_client(sync_client=True) as client:      # plain REST route: the typed filter sends nulls (422)
        while True:
            resp = client._client.post("/task_runs/filter", json={
                "flow_runs": {"id": {"any_": [str(state.state_details.flow_run_id)]}}, "limit": 100,
                "sort": "EXPECTED_START_TIME_ASC"})
            resp.raise_for_status()
            runs = resp.json()
            # a task run can be listed before its first state arrives ("state": null): keep polling
            if len(runs) == len(names) and all((r.get("state") or {}).get("type") == "COMPLETED" for r in runs) \
                    or time.time() > deadline:
                break
            time.sleep(0.5)
    assert sorted(r["name"].removeprefix("adapt-").rsplit("-", 1)[0] for r in runs) == sorted(names)
    assert {r["state"]["name"] for r in runs} == {"Reused"} and {r["state"]["type"] for r in runs} == {"COMPLETED"}

    # The typed client's read_artifacts sends `null` for unset filter fields, which this server
    # version rejects (422), so the latest artifact per key is read through the plain REST route.
    with get_client(sync_client=True) as client:
        data = {}
        for key in (METRICS_ARTIFACT, QUALITY_ARTIFACT):
            resp = client._client.get(f"/artifacts/{key}/latest")
            resp.raise_for_status()
            data[key] = resp.json()["data"]
    assert "| person |" in data[METRICS_ARTIFACT] and "source_only" in data[METRICS_ARTIFACT]
    assert "refined" in data[QUALITY_ARTIFACT]

    # as a user runs it: `python -m flows.adapt` with its own temporary Prefect server prints the run
    # line and nothing else: no telemetry traceback, no third-party warnings (-v brings them back)
    import subprocess
    import sys

    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect_home"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "flows.adapt", "--params", str(tmp_path / "params.yaml"),
                        "--workspace", str(tmp_path / "ws_flow")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.strip().startswith("run ") and r.stdout.strip().endswith(": succeeded")
    for noise in ("Traceback", "OperationalError", "Warning", "WARNING"):
        assert noise not in r.stderr, r.stderr[-3000:]


class _State:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc

    def result(self):
        if self.exc is not None:
            raise self.exc
        return None


def test_retries_only_for_transient_errors() -> None:
    """Prefect's retry condition: an I/O error is retried, a user's bad input never is."""
    from core.errors import InputError
    from flows.adapt import transient

    assert transient(None, None, _State(OSError("disk hiccup"))) is True
    assert transient(None, None, _State(InputError("bad value", "params pseudo", "fix it"))) is False


def test_flow_entry_points_turn_prefect_telemetry_off_unless_set(monkeypatch) -> None:
    """``apply_prefect_defaults`` sets the quiet defaults, keeping the user's own choice; importing
    ``flows.quiet`` or a flow module changes no environment (only an entry point does, ``python -m
    flows.adapt``, before prefect is imported, so Prefect's settings hold the values)."""
    import importlib
    import os
    import subprocess
    import sys

    import flows.quiet

    for key in flows.quiet.PREFECT_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    importlib.reload(flows.quiet)
    assert not set(flows.quiet.PREFECT_DEFAULTS) & set(os.environ)         # importing sets nothing
    flows.quiet.apply_prefect_defaults()
    assert {k: os.environ[k] for k in flows.quiet.PREFECT_DEFAULTS} == flows.quiet.PREFECT_DEFAULTS
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")       # the user's own choice stays
    flows.quiet.apply_prefect_defaults()
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"

    env = {k: v for k, v in os.environ.items() if k not in flows.quiet.PREFECT_DEFAULTS}
    show = ("from prefect.settings import get_current_settings as s; import os; "
            "print(os.environ.get('PREFECT_SERVER_LOGGING_LEVEL'), s().logging.level)")
    imported = subprocess.run([sys.executable, "-c", f"import flows.adapt; {show}"], env=env,
                              capture_output=True, text=True, check=True).stdout.split()
    assert imported == ["None", "INFO"]
    entry = ("import runpy, sys; sys.argv = ['flows.adapt', '--help']\ntry:\n    "
             "runpy.run_module('flows.adapt', run_name='__main__')\nexcept SystemExit:\n    pass\n" + show)
    ran = subprocess.run([sys.executable, "-c", entry], env=env, capture_output=True, text=True, check=True)
    assert ran.stdout.split()[-2:] == ["CRITICAL", "WARNING"]
