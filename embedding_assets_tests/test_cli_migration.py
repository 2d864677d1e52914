"""The migration commands a script depends on, run through `main` on the project's own Definitions and a
SQLite Dagster instance: migrate, checks, status, rollback and their JSON shapes and exit codes."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from embedding_assets.cli.main import main
from embedding_assets.cli.runner import dagster_instance
from embedding_assets.defs import tags
from embedding_assets.defs.assets.serving import serving_index
from embedding_assets.defs.checks.gates import GOLDEN_QUALITY, INDEX_CHECKS, SCORE_CALIBRATION
from embedding_assets.defs.jobs import PROMOTE_JOB
from embedding_assets.defs.sensors import (
    blocked_promotion_sensor,
    gates_after_build_sensor,
    promote_after_gates_sensor,
)
from embedding_assets.models.registry import DEFAULT_VERSION, load_registry
from embedding_assets.wiring import wiring

pytestmark = pytest.mark.slow
MINILM = DEFAULT_VERSION
QUERY = "how do I read a csv file with a header row"


@pytest.fixture(scope="module")
def cli(built_project, registry, tmp_path_factory):
    """The CLI's data folders filled from the built project (its vectors are reused, not re-encoded)."""
    wired = wiring()  # the CLI's own resources: the session's data folder (EMBEDDING_ASSETS_DATA)
    if Path(wired.lancedb.uri).exists() or Path(wired.serving.folder).exists():
        pytest.fail(f"{wired.lancedb.uri} already holds a deployment; this module needs a clean one")
    shutil.copytree(built_project.corpus, wired.corpus_source.path, dirs_exist_ok=True)
    shutil.copytree(built_project.db_uri, wired.lancedb.uri)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster_home")))
        patch.setenv("EMBEDDING_ASSETS_LOG_LEVEL", "WARNING")
        yield next(v.id for v in registry.versions if v.loader == "model2vec")


def run(capsys, *argv: str) -> tuple[int, dict, str]:
    """Exit code, JSON output and stderr of one command."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip().startswith("{") else {}, captured.err


def _states(capsys) -> dict[str, str]:
    code, status, _ = run(capsys, "status", "--json")
    assert code == 0 and all({"id", "state", "rows"} <= set(v) for v in status["versions"])
    return {v["id"]: v["state"] for v in status["versions"]}


def _roles(built: dict[str, str]) -> dict[str, str]:
    """Every shipped version's expected state: `built`, and "registered" for the others."""
    return {**dict.fromkeys(load_registry().ids, "registered"), **built}


def _blocked_observation(run_id: str) -> dg.AssetObservation:
    """What the migration recorded on serving_index about the blocked run; the blocked-promotion sensor
    (for runs launched from a code location) records the same from the failed run."""
    instance = dagster_instance()
    recorded = instance.fetch_observations(serving_index.key, limit=1).records[0].asset_observation
    failure = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0].dagster_event
    with dg.build_run_status_sensor_context(
        sensor_name=blocked_promotion_sensor.name,
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run_id),
        resources={"serving": wiring().serving},
    ) as context:
        blocked_promotion_sensor(context)
    sensed = instance.fetch_observations(serving_index.key, limit=1).records[0].asset_observation
    assert sensed.description == recorded.description and sensed.metadata == recorded.metadata
    return recorded


def _requested_after(sensor, run_id: str) -> dg.RunRequest:
    """What a run-status sensor asks for after the successful run `run_id` as if no CLI drove it (launched
    from the UI, say); for the CLI's own runs it asks nothing, since the CLI runs the next step itself."""
    instance = dagster_instance()
    finished = instance.get_run_by_id(run_id)
    success = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)[0].dagster_event
    undriven = finished.with_tags({k: v for k, v in finished.tags.items() if k != tags.CLI_DRIVEN})
    asked = []
    for run in (finished, undriven):
        with dg.build_run_status_sensor_context(
            sensor_name=sensor.name, dagster_event=success, dagster_instance=instance, dagster_run=run
        ) as context:
            asked.append(sensor(context))
    assert isinstance(asked[0], dg.SkipReason) and isinstance(asked[1], dg.RunRequest)
    return asked[1]


def _serving_overview() -> dict:
    """The latest serving_index materialization's metadata values: what serves, what it replaced, the move."""
    records = dagster_instance().fetch_materializations(serving_index.key, limit=1).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def test_migrate_rollback_round_trip(cli, capsys):
    static = cli
    code, first, _ = run(capsys, "migrate", "--to", MINILM, "--json")
    assert code == 0 and first["promoted"] and first["served_version"] == MINILM
    gates = _requested_after(gates_after_build_sensor, first["run_id"])  # the build -> its gates
    assert gates.partition_key == MINILM and gates.tags[tags.MIGRATION] == first["run_id"]
    promotion = _requested_after(promote_after_gates_sensor, first["gates_run_id"])  # the gates -> serving
    assert promotion.partition_key == MINILM and promotion.tags[tags.MIGRATION] == first["run_id"]
    assert first["promote_run_id"] and promotion.job_name in (None, PROMOTE_JOB)
    assert [c["name"] for c in first["checks"]] and {c["name"] for c in first["checks"]} == set(INDEX_CHECKS)
    assert all({"name", "passed", "severity", "metadata"} == set(c) for c in first["checks"])
    _, served_before, _ = run(capsys, "search", QUERY, "--json")

    # On the test corpus's few judged queries the static model's drop from MiniLM is not significant (golden
    # quality only warns); held to a floor of 0.9 nDCG@10 for this migration, it is blocked.
    strict = ("--override", "golden_ndcg_floor=0.9", "--reason", "hold the cheap model to 0.9")
    code, blocked, _ = run(capsys, "migrate", "--to", static, *strict, "--json")
    assert code == 1 and not blocked["promoted"] and blocked["served_version"] == MINILM
    failing = [c for c in blocked["checks"] if not c["passed"] and c["severity"] == "ERROR"]
    assert [c["name"] for c in failing] == [GOLDEN_QUALITY]
    assert failing[0]["metadata"]["served_ndcg@10"] > failing[0]["metadata"]["ndcg@10"]
    assert _states(capsys) == _roles({MINILM: "served", static: "candidate"})
    observation = _blocked_observation(blocked["gates_run_id"])
    assert observation.metadata["blocked_version"].value == static
    assert observation.metadata["served_version"].value == MINILM
    assert (
        observation.description.startswith(f"blocked: {static}") and GOLDEN_QUALITY in observation.description
    )
    code, _, err = run(capsys, "promote", "--version", static)  # a later run reads the same verdict
    assert code == 1 and "blocked from serving: golden_quality" in err

    code, _, err = run(capsys, "migrate", "--to", static, "--override", "golden_ndcg_floor=0.5", "--json")
    assert code == 2 and "--reason" in err

    code, promoted, _ = run(
        capsys, "migrate", "--to", static, "--override", "golden_ndcg_floor=0.5", "--reason", "cost", "--json"
    )
    assert code == 0 and promoted["promoted"] and promoted["served_version"] == static
    assert _states(capsys) == _roles({MINILM: "previous", static: "served"})
    overview = _serving_overview()
    assert overview["served_version"] == static and overview["previous_version"] == MINILM
    assert overview["move"].startswith(f"promote: {MINILM} ") and "5/6 gates passed" in overview["move"]
    # a drop not ruled out, and MiniLM's thresholds not carried into the static space: warnings
    warned = {c["name"]: c["severity"] for c in promoted["checks"] if not c["passed"]}
    assert warned == {GOLDEN_QUALITY: "WARN", SCORE_CALIBRATION: "WARN"}
    run_tags = dagster_instance().get_run_by_id(promoted["run_id"]).tags
    assert run_tags[tags.OVERRIDES] == "golden_ndcg_floor=0.5" and run_tags[tags.REASON] == "cost"
    assert run_tags[tags.TRIGGER] == "cli" and run_tags[tags.VERSION] == static

    code, rolled, _ = run(capsys, "rollback", "--json")
    assert code == 0 and rolled == {"served_version": MINILM, "previous_version": static}
    assert _serving_overview()["move"].startswith(f"rollback: {static} ")
    _, served_after, _ = run(capsys, "search", QUERY, "--json")
    assert served_after == served_before

    code, gates, _ = run(capsys, "checks", "--version", static, "--json")
    assert code == 0 and not gates["promoted"] and {c["name"] for c in gates["checks"]} == set(INDEX_CHECKS)
    warned = {c["name"]: c["severity"] for c in gates["checks"] if not c["passed"]}
    assert warned == {GOLDEN_QUALITY: "WARN", SCORE_CALIBRATION: "WARN"}  # golden at its default floor


def test_rollback_with_nothing_before_is_a_clear_error(cli, capsys):
    """After the round trip, MiniLM's first promotion replaced nothing: no further way back."""
    assert main(["rollback", "--json"]) == 2
    assert "replaced nothing" in capsys.readouterr().err


def test_refresh_reports_the_documented_shape(cli, capsys):
    code, report, _ = run(capsys, "refresh", "--json")
    assert code == 0
    keys = {"docs_added", "docs_changed", "docs_deleted", "chunks_embedded", "chunks_reused"}
    assert keys | {"rows_upserted", "rows_deleted", "seconds", "versions"} <= set(report)
    assert report["chunks_embedded"] == report["rows_upserted"] == 0  # nothing changed since the build
    assert report["versions"][0]["id"] == MINILM and report["versions"][0]["role"] == "served"


@pytest.mark.parametrize(
    ("argv", "function"),
    [
        (["checks", "--version", MINILM], "run_gates"),
        (["migrate", "--to", MINILM], "migrate"),
        (["backfill", "--version", MINILM], "backfill"),
    ],
)
def test_launch_reaches_the_runner(argv, function, monkeypatch, capsys):
    """`--launch` is handed to the runner (which the daemon tests run on a real queue)."""
    from embedding_assets.cli import runner
    from embedding_assets.defs.run_results import GateRun

    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        gated = GateRun(MINILM, promoted=False, served_version=None)
        return runner.BackfillReport(MINILM, build=gated) if function == "backfill" else gated

    monkeypatch.setattr(runner, function, record)
    main([*argv, "--launch", "--json"])
    assert seen["launch"] is True and json.loads(capsys.readouterr().out)
