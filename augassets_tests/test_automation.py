"""Staleness and the daemon: what a rerun, a changed code version, new classes or one method's new images make
stale and run again, and a real `dagster-daemon` backfilling at its cron tick."""

from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from augassets import cli
from augassets.build import build_defs
from augassets.core.warehouse import Warehouse
from augassets.runner import runs as runner
from augassets.runner.command import materialize
from augassets.tags import ASSETS_TAG, PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

from .helpers import _folder_profile, defs


def test_rerun_with_nothing_changed_launches_nothing(benchmark_run):
    profile, table = benchmark_run
    instance = dg.DagsterInstance.get()
    runs_before = len(instance.get_runs())
    lines = []
    again = cli.benchmark(profile, say=lines.append)
    assert again == table
    assert len(instance.get_runs()) == runs_before
    assert sum("up to date" in line for line in lines) == len(cli.benchmark_keys(defs))
    # The table names the machine and its training kernels' fingerprint, at the classifier steps' threads.
    from augassets.core.classifier import kernel_fingerprint

    threads = profile.partition_threads or profile.torch_threads
    machine = [line for line in lines if line.startswith("Machine: ")]
    assert len(machine) == 1 and f"fingerprint {kernel_fingerprint(profile.classifier, threads)} at " in machine[0]


def test_a_changed_code_version_reruns_that_asset_and_what_reads_it(private_state):
    """One notion of stale: the automation conditions name the asset whose code version changed, the
    CLI runs exactly it and then its downstream, and a rerun with nothing changed launches nothing."""
    import os

    changed = replace(
        private_state, duplicates=replace(private_state.duplicates, target_recall=0.9)
    )  # leak_threshold's version
    changed_defs = build_defs(changed, daemon=False)
    instance = dg.DagsterInstance.get()
    cursor = runner.load_cursor(Path(os.environ["DAGSTER_HOME"]))
    requested, _ = runner.evaluate(changed_defs, instance, cli.benchmark_keys(changed_defs), cursor)
    # Dagster requests the changed asset and, in the same run, what lies below it unpartitioned (the
    # results and the reports that read them); those also read duplicate_report, which the change makes
    # stale too, so the CLI runs leak_threshold alone first.
    assert requested == {
        dg.AssetKey(name): {None}
        for name in ("leak_threshold", "duplicate_summary", "results_table", "compute_report", "analysis_report")
    }
    assert [group.names for group in runner.plan_runs(changed_defs, requested)] == [["leak_threshold"]]

    before = {run.run_id for run in instance.get_runs()}
    materialize(changed, cli.benchmark_keys, say=lambda *_: None)
    launched = [run for run in instance.get_runs() if run.run_id not in before]
    assert [run.tags[ASSETS_TAG] for run in reversed(launched)] == [
        "leak_threshold",
        "duplicate_report",
        "duplicate_summary,results_table,compute_report,analysis_report",
    ]
    recall = Warehouse(changed.tables).query("SELECT recall FROM leak_threshold")["recall"][0]
    assert recall >= 0.9

    runs = len(instance.get_runs())
    lines = []
    materialize(changed, cli.benchmark_keys, say=lines.append)
    assert len(instance.get_runs()) == runs
    assert sum("up to date" in line for line in lines) == len(cli.benchmark_keys(changed_defs))


def test_new_classes_sensor_registers_exactly_the_new_classes(image_folder):
    """The sensor adds the class folders the dataset gained as class partitions and asks for the catalog
    and splits run; a folder that is not a WordNet id is skipped; with nothing new it requests nothing."""
    sensor = build_defs(_folder_profile(image_folder)).resolve_sensor_def("new_classes")
    instance = dg.DagsterInstance.ephemeral()
    (image_folder / "train" / "not_a_wnid").mkdir()

    first = sensor(dg.build_sensor_context(instance=instance))
    assert [request.partition_keys for request in first.dynamic_partitions_requests] == [["n03595614", "n04489008"]]
    assert len(first.run_requests) == 1 and first.run_requests[0].run_key.startswith("new-classes-")
    instance.add_dynamic_partitions("class", ["n03595614", "n04489008"])

    nothing_new = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(nothing_new, dg.SkipReason)
    assert nothing_new.skip_message == "no new classes: 2 registered (1 class folders skipped, see the tick's log)"

    (image_folder / "train" / "n04021028").mkdir()  # pullover
    gained = sensor(dg.build_sensor_context(instance=instance))
    assert [request.partition_keys for request in gained.dynamic_partitions_requests] == [["n04021028"]]
    assert gained.run_requests[0].run_key != first.run_requests[0].run_key


def test_a_new_class_leaves_the_existing_class_partitions_alone(private_state):
    """Refreshing the catalog and splits (what the sensor requests when a class arrives) makes the
    cross-class assets stale, never the existing class × method partitions."""
    import os

    profile, instance = private_state, dg.DagsterInstance.get()
    cli_defs = build_defs(profile, daemon=False)
    cursor = runner.load_cursor(Path(os.environ["DAGSTER_HOME"]))
    # First the state as earlier tests left it (the foundation tests in test_pipeline.py rebuild the
    # foundation in the shared state): this evaluation's requests count as handled.
    _, cursor = runner.evaluate(cli_defs, instance, cli.benchmark_keys(cli_defs), cursor)
    prepare = runner.RunGroup((dg.AssetKey("class_catalog"), dg.AssetKey("dataset_splits")), None)
    runner.execute(cli_defs, instance, prepare, lambda *_: None)
    requested, _ = runner.evaluate(cli_defs, instance, cli.benchmark_keys(cli_defs), cursor)
    names = {key.to_user_string() for key in requested}
    assert not names & {"class_prompts", "augmentation_images", "duplicate_report"}
    # The mini world is drawn from the study's classes, so its pool (and all it feeds) follows the splits.
    assert {"web_pool", "excluded_classes", "augmented_datasets"} <= names


def test_excluded_classes_rewritten_with_the_same_rows_leaves_every_set_and_classifier_alone(private_state):
    """excluded_classes is rewritten whenever any method's images are (a method added to a home), and
    every augmented set reads it: only a change of its rows (its data version) makes them stale."""
    import os

    profile, instance = private_state, dg.DagsterInstance.get()
    cli_defs = build_defs(profile, daemon=False)
    keys = cli.benchmark_keys(cli_defs)
    cursor = runner.load_cursor(Path(os.environ["DAGSTER_HOME"]))
    _, cursor = runner.evaluate(cli_defs, instance, keys, cursor)
    excluded = runner.RunGroup((dg.AssetKey("excluded_classes"),), None)
    runner.execute(cli_defs, instance, excluded, lambda *_: None)
    requested, cursor = runner.evaluate(cli_defs, instance, keys, cursor)
    assert not {key.to_user_string() for key in requested} & {
        "augmented_datasets",
        "classifier_scores",
        "results_table",
    }, requested

    # One class's retrieval rows cut below the need: that class is now excluded, and every set follows.
    db = Warehouse(profile.tables)
    wnid = db.query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"][0]
    rows = db.query("SELECT * FROM augmentation_manifest WHERE method = 'retrieval' AND wnid = ?", [wnid])
    db.replace("augmentation_manifest", rows.head(1), where={"method": "retrieval", "wnid": wnid})
    runner.execute(cli_defs, instance, excluded, lambda *_: None)
    assert db.query("SELECT wnid FROM excluded_classes")["wnid"].to_list() == [wnid]
    requested, _ = runner.evaluate(cli_defs, instance, keys, cursor)
    graph = cli_defs.resolve_asset_graph()
    every_set = set(graph.get(dg.AssetKey("augmented_datasets")).partitions_def.get_partition_keys())
    assert {str(p) for p in requested.get(dg.AssetKey("augmented_datasets"), set())} == {str(p) for p in every_set}


def test_one_methods_new_images_retrain_that_methods_classifiers_only(private_state):
    """One method's images rebuilt (a partition deleted): its sets and classifiers retrain, even though
    they wait a round for excluded_classes, which the new images rewrite; the other methods' do not,
    since the excluded classes stay the same. Before, the waiting partitions were dropped and the
    method kept its old scores."""
    import shutil

    profile = replace(private_state, methods=("real_p", "simple_prompt", "retrieval"))
    instance = dg.DagsterInstance.get()
    # First whatever earlier tests left stale (test_pipeline.py rebuilds the foundation in the shared state).
    materialize(profile, cli.benchmark_keys, say=lambda *_: None)
    wnid = Warehouse(profile.tables).query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"][0]
    shutil.rmtree(profile.home / "store" / "images" / "simple_prompt" / wnid)
    before = {run.run_id for run in instance.get_runs()}
    lines = []
    materialize(profile, cli.benchmark_keys, say=lines.append)
    launched = [run for run in reversed(instance.get_runs()) if run.run_id not in before]
    trained = [
        (run.tags.get(PARTITION_RANGE_START_TAG), run.tags.get(PARTITION_RANGE_END_TAG))
        for run in launched
        if "classifier_scores" in run.tags[ASSETS_TAG].split(",")
    ]
    assert trained == [("simple_prompt|0", "simple_prompt|1")], ("\n".join(lines), trained)
    assert any(
        run.tags[ASSETS_TAG] == "excluded_classes" or "excluded_classes" in run.tags[ASSETS_TAG].split(",")
        for run in launched
    )


def _dagster_cli(*args: str) -> list[str]:
    import sys

    return [str(Path(sys.executable).with_name(args[0])), *args[1:]]


def _wait_for(predicate, what: str, timeout: float, daemon=None):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if daemon is not None and daemon.poll() is not None:
            pytest.fail(f"dagster-daemon exited ({daemon.returncode}) while waiting for {what}")
        time.sleep(2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_daemon_backfills_at_the_cron_tick_and_resumes_after_a_restart(private_state, tmp_path):
    """A real `dagster-daemon` on smoke (cron: every minute). The duplicate reports are wiped, so they
    are missing; at the next cron tick a backfill requests them; the daemon is killed as soon as the backfill
    exists and restarted, and the backfill completes; the summary and the results table follow; later
    evaluations with nothing changed request nothing."""
    import os
    import signal
    import subprocess
    import time

    repo = Path(__file__).resolve().parents[1]
    # Two methods, not the whole smoke grid: what is tested (ticks, backfills, restarts) does not depend on them, and
    # one image method's partitions form one contiguous range, so the backfill is one run (each run is a new process).
    methods = ("real_p", "retrieval")
    env = {**os.environ, "AUGASSETS_PROFILE": "smoke", "AUGASSETS_METHODS": ",".join(methods)}
    cli.benchmark(
        replace(private_state, methods=methods), say=lambda *_: None
    )  # the subset's results table: nothing else is stale
    instance = dg.DagsterInstance.get()
    report, table = dg.AssetKey("duplicate_report"), dg.AssetKey("results_table")
    table_before = instance.get_latest_materialization_event(table).timestamp
    all_reports = {key for key in instance.get_materialized_partitions(report) if key.split("|")[0] in methods}
    instance.wipe_assets([report])  # (SQLite event logs cannot wipe single partitions)
    assert not instance.get_materialized_partitions(report)
    workspace = ["-w", str(repo / "workspace.yaml")]
    subprocess.run(
        _dagster_cli("dagster", "sensor", "start", "scheduled_backfill", *workspace),
        cwd=repo,
        env=env,
        check=True,
        capture_output=True,
    )

    def start_daemon(name: str):
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process below
        return subprocess.Popen(
            _dagster_cli("dagster-daemon", "run", *workspace),
            cwd=repo,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    daemons = [start_daemon("daemon1")]
    try:
        backfill = _wait_for(lambda: instance.get_backfills(), "the cron tick's backfill", 240, daemons[0])[0]
        os.kill(daemons[0].pid, signal.SIGKILL)  # the daemon only: the run it launched keeps running
        daemons[0].wait()
        daemons.append(start_daemon("daemon2"))
        done = _wait_for(
            lambda: (
                instance.get_backfill(backfill.backfill_id).status.value.startswith("COMPLETED")
                and instance.get_backfill(backfill.backfill_id)
            ),
            "the backfill to complete",
            400,
            daemons[1],
        )
        assert done.status.value == "COMPLETED_SUCCESS", (tmp_path / "daemon2.log").read_text()[-3000:]
        assert dg.AssetKey("duplicate_report") in done.asset_selection
        assert instance.get_materialized_partitions(report) == all_reports
        # Sensor ticks (and, as its runs queue behind the duckdb pool, usually a cron tick) came while it ran:
        # no second backfill.
        assert [b.backfill_id for b in instance.get_backfills()] == [backfill.backfill_id]
        backfill_runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": done.backfill_id}))
        assert {key.to_user_string() for run in backfill_runs for key in run.asset_selection} == {"duplicate_report"}
        for key in (dg.AssetKey("duplicate_summary"), table):  # downstream follows the update, before the next tick
            _wait_for(
                lambda k=key: instance.get_latest_materialization_event(k).timestamp > table_before,
                key.to_user_string(),
                180,
                daemons[1],
            )

        # A few evaluations later: nothing is stale, nothing is requested. (That the cron tick itself
        # requests nothing once everything is materialized is the headless rerun test's claim: the tick only
        # gates missing and code-changed partitions, and there are none.)
        runs, backfills = len(instance.get_runs()), len(instance.get_backfills())
        time.sleep(2 * private_state.automation.interval_s + 2)
        assert (len(instance.get_runs()), len(instance.get_backfills())) == (runs, backfills)
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(daemon.pid, signal.SIGKILL)
