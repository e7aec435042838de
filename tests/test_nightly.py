"""Nightly retraining: the champion pointer and decision, the flow (skip / run / promote / keep /
fail) on tiny generated data with the shared nano teacher, and the served deployment's schedule.

Two real adapt runs train a student (first night; new frames added); the other nights skip (data
unchanged) or fail early, so the flow logic is exercised cheaply.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.champion import (Champion, champion_path, decide, format_report, gt_fingerprint, load_champion,
                            metric_value, promote, read_history, watched_fingerprints)
from core.errors import InputError
from tests.test_pipeline import _folder, _params, needs_nano

METRICS = {"adapted": {"person": {"mAP_50": 0.4}, "car": {"mAP_50": -1.0}, "all": {"mAP": 0.2, "mAP_50": 0.5}}}


def _champ(value: float, metric: str = "adapted.all.mAP_50", datasets: dict | None = None) -> Champion:
    return Champion(run_id="r0", metric=metric, value=value, datasets=datasets or {"syn": "sha256:x"})


# ------------------------------------------------------------------------------------------- decide
def test_decide_promotes_only_a_strictly_better_challenger() -> None:
    assert decide(None, METRICS).promote
    assert decide(_champ(0.4), METRICS).promote
    tie = decide(_champ(0.5), METRICS)
    assert not tie.promote and tie.challenger == tie.champion == 0.5
    assert not decide(_champ(0.6), METRICS).promote
    assert not decide(_champ(0.45), METRICS, min_improvement=0.1).promote
    assert decide(_champ(0.35), METRICS, min_improvement=0.1).promote
    assert decide(_champ(0.1, metric="adapted.all.mAP"), METRICS, metric="adapted.all.mAP").promote


def test_decide_refuses_bad_metrics() -> None:
    with pytest.raises(InputError, match="no 'mAP_75'"):
        decide(None, METRICS, metric="adapted.all.mAP_75")
    with pytest.raises(InputError, match="promoted on"):
        decide(_champ(0.1, metric="adapted.all.mAP"), METRICS)
    with pytest.raises(InputError, match="min_improvement"):
        decide(None, METRICS, min_improvement=-0.1)
    # pycocotools' -1 (no ground truth) is not a value: never promoted on it
    assert metric_value(METRICS, "adapted.car.mAP_50") is None
    assert not decide(None, METRICS, metric="adapted.car.mAP_50").promote


def test_pointer_and_history_roundtrip(tmp_path: Path) -> None:
    assert load_champion(tmp_path) is None and read_history(tmp_path) == []
    promote(tmp_path, _champ(0.3))
    promote(tmp_path, Champion(run_id="r1", metric="adapted.all.mAP_50", value=0.4, datasets={"syn": "sha256:y"}))
    assert load_champion(tmp_path).run_id == "r1"
    assert [h["run_id"] for h in read_history(tmp_path)] == ["r0", "r1"]
    champion_path(tmp_path).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_champion(tmp_path)
    champion_path(tmp_path).write_text(json.dumps({"run_id": "r"}))
    with pytest.raises(InputError, match="malformed"):
        load_champion(tmp_path)
    md = format_report(nightly_id="n", outcome="kept", reason="why", datasets={"syn": "sha256:z"},
                       champion=_champ(0.6), challenger_run="r2", challenger_metrics=METRICS)
    assert "| adapted | all | mAP_50 **←** | — | 0.5000 |" in md and "| syn | sha256:z | sha256:x |" in md


@needs_nano   # the parameters name the shared teacher checkpoint, validated on load
def test_fingerprints_follow_the_data(tmp_path: Path) -> None:
    from pipeline.params import params_from_dict

    _folder(tmp_path, 3)
    before = watched_fingerprints(params_from_dict(_params(tmp_path)))
    assert before == watched_fingerprints(params_from_dict(_params(tmp_path)))
    _folder(tmp_path, 1, start=3)                    # the generator extends the folder by one frame
    after = watched_fingerprints(params_from_dict(_params(tmp_path)))
    assert set(after) == {"syn"} and after != before

    syn = {**_params(tmp_path), "data": {"synthetic": {"n_pairs": 4, "seed": 1}}}
    fp = watched_fingerprints(params_from_dict(syn))
    syn["data"]["synthetic"]["n_pairs"] = 5
    assert set(fp) == {"synthetic"} and fp != watched_fingerprints(params_from_dict(syn))


# --------------------------------------------------------------------------------------- deployment
@needs_nano   # the parameters name the shared teacher checkpoint, validated on load
def test_deployment_carries_cron_and_timezone(tmp_path: Path, capsys) -> None:
    from rgb2thermal_cli.main import main
    from rgb2thermal_cli.serve import build_deployment, describe

    _folder(tmp_path, 2)
    params_file = tmp_path / "params.yaml"
    params = _params(tmp_path)
    params_file.write_text(json.dumps(params))           # JSON is YAML
    # promotion is decided on a val split: parameters without one are refused now, not at 2 a.m.
    assert main(["serve", "--params", str(params_file), "--dry-run"]) == 2
    assert "decided on a val split" in capsys.readouterr().err
    assert main(["serve", "--params", str(params_file), "--set", "data.val_fraction=0.25", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"]["overrides"] == ["data.val_fraction=0.25"]
    assert main(["serve", "--params", str(params_file), "--decide-on", "test", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"]["decide_on"] == "test"
    params["data"]["val_fraction"] = 0.25
    params_file.write_text(json.dumps(params))
    dep = build_deployment(params_file, tmp_path / "ws", cron="30 3 * * 1", timezone="Europe/Berlin")
    assert dep.flow_name == "rgb2thermal-nightly" and dep.name == "nightly"
    (sched,) = dep.schedules
    assert sched.schedule.cron == "30 3 * * 1" and sched.schedule.timezone == "Europe/Berlin"
    assert dep.parameters["workspace"] == str((tmp_path / "ws").resolve())
    assert getattr(dep.concurrency_limit, "limit", dep.concurrency_limit) == 1     # one night at a time
    assert describe(dep)["schedules"] == [{"cron": "30 3 * * 1", "timezone": "Europe/Berlin", "active": True}]

    assert main(["serve", "--params", str(params_file), "--workspace", str(tmp_path / "ws"), "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schedules"][0]["cron"] == "0 2 * * *" and out["schedules"][0]["timezone"] == "UTC"
    assert main(["serve", "--params", str(params_file), "--cron", "every night", "--dry-run"]) == 2
    assert "invalid schedule" in capsys.readouterr().err
    assert main(["serve", "--params", str(params_file), "--timezone", "Mars/Olympus", "--dry-run"]) == 2
    assert "unknown time zone" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- flow
@needs_nano
def test_nightly_flow_skip_promote_keep_and_fail(tmp_path: Path, prefect_harness, quick_prefect,
                                                 monkeypatch) -> None:
    import flows.nightly
    from flows.nightly import REPORT_ARTIFACT, nightly_flow
    from pipeline.lock import LOCK_NAME
    from pipeline.runs import list_records

    # the workspace lock is held by the nightly run itself from the challenger run through promotion
    holders = []
    real_promote = flows.nightly.promote

    def promote_spy(ws, champion):
        holders.append(json.loads((Path(ws) / LOCK_NAME).read_text())["run_id"])
        return real_promote(ws, champion)

    monkeypatch.setattr(flows.nightly, "promote", promote_spy)
    # planted credentials: none may reach a run record, a report or a Prefect artifact (checked at the end)
    secrets = {"AWS_SECRET_ACCESS_KEY": "PLANTED/aws+secret/nightly", "DVC_REMOTE_PASSWORD": "planted-dvc-pw-nightly",
               "RGB2THERMAL_TEST_TOKEN": "planted-token-nightly"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)

    _folder(tmp_path, 8)
    params = _params(tmp_path)
    params["eval"] = {"baselines": ["source_only"]}          # one student training is enough here
    ws = tmp_path / "ws"

    # 1. no champion yet: the challenger runs and is promoted
    first = nightly_flow(params_path=None, workspace=str(ws), params=params, decide_on="test")
    assert first["outcome"] == "promoted" and first["challenger_run"] == first["champion_run"]
    assert holders == [first["nightly_id"]]
    champ = load_champion(ws)
    (rec,) = list_records(ws)
    assert champ.run_id == rec.run_id and rec.status == "succeeded"
    assert champ.value == rec.metrics["eval"]["adapted"]["all"]["mAP_50"]
    assert champ.datasets == {"syn": rec.datasets["syn"]} and champ.test_set.startswith("sha256:")
    assert Path(champ.model["checkpoint"]).is_file() and Path(champ.model["checkpoint"]).parent == ws / "champion" / rec.run_id
    assert len(read_history(ws)) == 1
    assert "promoted" in Path(first["report"]).read_text()
    assert "decided on the TEST split (explicit opt-in" in Path(first["report"]).read_text()

    # 2. data unchanged: no adapt run, no new record
    again = nightly_flow(params_path=None, workspace=str(ws), params=params, decide_on="test")
    assert again["outcome"] == "no change" and again["challenger_run"] is None
    assert len(list_records(ws)) == 1
    assert Path(again["report"]).parent == ws / "nightly" and "no change" in Path(again["report"]).read_text()

    # 3. new frames arrive (the generator extends the folder) while the champion is better than
    #    anything (value 2 > any mAP; no archived model, so it cannot be re-scored): the challenger
    #    runs on the new data, loses and is not promoted; the pointer stays byte-identical
    promote(ws, Champion(run_id=champ.run_id, metric=champ.metric, value=2.0, datasets=champ.datasets,
                         metrics=champ.metrics, test_set=champ.test_set))
    pointer = champion_path(ws).read_bytes()
    _folder(tmp_path, 2, start=8)
    kept = nightly_flow(params_path=None, workspace=str(ws), params=params, decide_on="test")
    assert kept["outcome"] == "kept" and kept["champion_run"] == champ.run_id
    assert kept["challenger_run"] != champ.run_id and len(list_records(ws)) == 2
    challenger = list_records(ws)[-1]
    assert challenger.datasets["syn"] != champ.datasets["syn"] and not challenger.stage("data").reused
    assert champion_path(ws).read_bytes() == pointer and len(read_history(ws)) == 2
    report = Path(kept["report"]).read_text()
    assert "2.0000" in report and f"{champ.value:.4f}" in report

    # 4. the challenger run fails (no homography for its version): the champion is untouched
    empty = tmp_path / "empty_registry"
    empty.mkdir()
    with pytest.raises(InputError, match="homography"):
        nightly_flow(params_path=None, workspace=str(ws), params={**params, "warp": {"registry_dir": str(empty)}},
                     decide_on="test")
    assert champion_path(ws).read_bytes() == pointer and len(read_history(ws)) == 2
    assert list_records(ws)[-1].status == "failed"
    failed = sorted((ws / "nightly").glob("*.md"))[-1].read_text()
    assert "failed" in failed and "champion is untouched" in failed

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        resp = client._client.get(f"/artifacts/{REPORT_ARTIFACT}/latest")
        resp.raise_for_status()
    assert "failed" in resp.json()["data"]

    # 5. the archived champion model is re-scored when the test set differs from its promotion's:
    #    its stored (impossible) value 2 is replaced by a real measurement on the current test set
    promote(ws, Champion(run_id=champ.run_id, metric=champ.metric, value=2.0, datasets={"syn": "sha256:old"},
                         metrics=champ.metrics, model=champ.model, test_set="sha256:old"))
    rescored = nightly_flow(params_path=None, workspace=str(ws), params=params, decide_on="test")
    assert "re-scored" in rescored["comparison"] and 0.0 <= rescored["champion_value"] <= 1.0
    assert rescored["outcome"] == ("promoted" if rescored["challenger_value"] > rescored["champion_value"] else "kept")
    assert load_champion(ws).run_id == rescored["champion_run"]

    with get_client(sync_client=True) as client:
        resp = client._client.post("/artifacts/filter", json={"limit": 200})
        resp.raise_for_status()
    artifacts = json.dumps(resp.json())
    assert REPORT_ARTIFACT in artifacts and "promoted" in artifacts
    files = [f for f in ws.rglob("*") if f.is_file()]
    for v in secrets.values():
        assert v not in artifacts, "a planted secret reached a Prefect artifact"
        assert not [f for f in files if v.encode() in f.read_bytes()], "a planted secret reached a workspace file"

@needs_nano
def test_nightly_decides_on_val_and_refuses_without_it(tmp_path: Path, prefect_harness, quick_prefect) -> None:
    """Promotion is a decision: made on the val split's metrics (and the champion's value is the val
    number, not the test one); parameters without a val split are refused before any work."""
    from flows.nightly import nightly_flow
    from pipeline.runs import list_records

    _folder(tmp_path, 10)
    params = _params(tmp_path)
    params["eval"] = {"baselines": ["source_only"]}
    ws = tmp_path / "ws"
    with pytest.raises(InputError, match="no val split"):
        nightly_flow(params_path=None, workspace=str(ws), params=params)
    assert list_records(ws) == [] and not (ws / "stages").exists()

    params["data"]["val_fraction"] = 0.4
    out = nightly_flow(params_path=None, workspace=str(ws), params=params)
    assert out["outcome"] == "promoted"
    (rec,) = list_records(ws)
    champ = load_champion(ws)
    assert champ.value == rec.metrics["val"]["adapted"]["all"]["mAP_50"]
    assert champ.test_set == gt_fingerprint(ws / "stages" / "index" / "thermal_val.json")
    assert "decided on the val split" in Path(out["report"]).read_text()


@needs_nano
def test_the_promoted_model_is_the_last_rounds_student(tmp_path: Path) -> None:
    """With self-training rounds the adapted model is student@round2, not round 1's student: what
    the nightly flow archives and promotes (and what a sweep prunes on)."""
    from pipeline.params import params_from_dict
    from pipeline.plan import adapted_step

    _folder(tmp_path, 2)
    params = _params(tmp_path)
    assert adapted_step(params_from_dict(params)) == "student"
    params["self_training"] = {"rounds": 2}
    params["thermal_source"] = {"enabled": True}
    assert adapted_step(params_from_dict(params)) == "student@round2"
