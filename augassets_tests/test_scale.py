"""Scale-out on real services: the Dagster instance on a real PostgreSQL and steps on Celery workers
with a real Redis as broker (Debian's, started here on 127.0.0.1 with throwaway data folders and
stopped at the end, also on failure)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from augassets.core.warehouse import Warehouse

from . import services
from .services import free_port, postgres, redis

# One pytest worker runs this module's tests, one after another: each starts servers and workers of its
# own, with timeouts sized for a 2-core machine that is not also running another of them.
pytestmark = pytest.mark.xdist_group("services")

SCORES = (
    "SELECT method, replicate, test_top1, best_epoch FROM classifier_scores "
    "WHERE method IN ('real_p', 'real_2p') ORDER BY method, replicate"
)


def _augassets(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("augassets")), *args]


def test_the_instance_on_postgres_holds_the_runs_and_the_results_equal_sqlites(benchmark_run, tmp_path):
    """``augassets benchmark`` with AUGASSETS_POSTGRES_URL set: the home's dagster.yaml gains the
    Postgres storage, every run and event lands in Postgres (no SQLite run storage is created), and
    the classifiers score exactly as the embedded instance's run of the same profile did."""
    import psycopg2

    profile, _ = benchmark_run
    home = tmp_path / "home"
    with postgres() as url:
        env = {
            **os.environ,
            "AUGASSETS_HOME": str(home),
            "AUGASSETS_PROFILE": "smoke",
            "AUGASSETS_METHODS": "real_p,real_2p",
            "AUGASSETS_POSTGRES_URL": url,
        }
        env.pop("DAGSTER_HOME", None)
        done = subprocess.run(_augassets("benchmark"), env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        dagster_home = home / "smoke" / "dagster"
        assert "postgres_url:\n      env: AUGASSETS_POSTGRES_URL" in (dagster_home / "dagster.yaml").read_text()
        assert not (dagster_home / "history" / "runs.db").exists(), "no SQLite run storage beside Postgres"
        with psycopg2.connect(url) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT status, count(*) FROM runs GROUP BY status")
            runs = dict(cursor.fetchall())
            cursor.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
            materializations = cursor.fetchone()[0]
        assert set(runs) == {"SUCCESS"} and runs["SUCCESS"] >= 3, runs
        assert materializations >= 2 * 2 + 2, "every classifier partition, the catalog and the splits"
    expected = Warehouse(profile.tables).query(SCORES)
    got = Warehouse(home / "smoke" / "store" / "tables").query(SCORES)
    assert got.height == 4 and got.equals(expected)


@pytest.mark.parametrize(
    ("setting", "url", "command", "said", "advice"),
    [
        (
            "AUGASSETS_POSTGRES_URL",
            "postgresql://augassets:secret@127.0.0.1:{port}/augassets",
            ("benchmark",),
            "the Dagster instance's Postgres at AUGASSETS_POSTGRES_URL=postgresql://augassets:***@127.0.0.1:",
            "start it, fix the URL, or unset AUGASSETS_POSTGRES_URL to use the embedded SQLite instance",
        ),
        (
            "AUGASSETS_CELERY_BROKER",
            "redis://:secret@127.0.0.1:{port}/0",
            ("worker", "--queue", "gpu"),
            "the Celery broker at AUGASSETS_CELERY_BROKER=redis://:***@127.0.0.1:",
            "start Redis there, fix the URL, or unset AUGASSETS_CELERY_BROKER to run steps in process",
        ),
    ],
    ids=["instance database", "celery broker"],
)
def test_an_unreachable_service_is_one_line_naming_the_setting(tmp_path, setting, url, command, said, advice):
    env = {
        **os.environ,
        "AUGASSETS_HOME": str(tmp_path / "home"),
        "AUGASSETS_PROFILE": "smoke",
        setting: url.format(port=free_port()),
    }
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run(_augassets(*command), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    last = (done.stdout + done.stderr).strip().splitlines()[-1]
    assert last.startswith(said), last
    assert last.endswith(advice)
    assert "secret" not in done.stdout + done.stderr


def test_the_kubernetes_configuration_loads(monkeypatch):
    """deploy/k8s: the instance (Postgres storage, K8sRunLauncher, run retries) passes Dagster's
    instance schema and the launcher's own; with AUGASSETS_EXECUTOR=k8s the definitions use the
    k8s_job_executor and run_config.yaml validates against a real job; every gpu-pool step asks its
    pod for one GPU. Not run: there is no cluster here."""
    import json

    import dagster as dg
    import yaml
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher

    from augassets.build import build_defs
    from augassets.profiles import get_profile

    folder = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
    monkeypatch.setenv("AUGASSETS_POSTGRES_URL", "postgresql://augassets:secret@db:5432/augassets")
    instance_config, _ = dagster_instance_config(str(folder))
    launcher = instance_config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    checked = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert checked.success, checked.errors
    assert "AUGASSETS_EXECUTOR=k8s" in checked.value["env_vars"]
    assert instance_config["run_retries"]["enabled"] and "postgres" in instance_config["storage"]

    monkeypatch.setenv("AUGASSETS_EXECUTOR", "k8s")
    defs = build_defs(get_profile("smoke"))
    job = defs.resolve_job_def("report")
    assert job.executor_def.name == "k8s"
    run_config = yaml.safe_load((folder / "run_config.yaml").read_text())
    dg.validate_run_config(job, run_config)  # raises on any error
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, {"execution": {"config": {"max_concurrent": "many"}}})

    graph = defs.resolve_asset_graph()
    gpu_steps = [graph.get(key) for key in graph.get_all_asset_keys() if graph.get(key).pools == {"gpu"}]
    assert len(gpu_steps) >= 10
    for node in gpu_steps:
        tags = node.assets_def.op.tags
        requested = tags["dagster-k8s/config"]
        requested = json.loads(requested) if isinstance(requested, str) else requested
        assert requested["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 1, node.key
        assert tags["dagster-celery/queue"] == "gpu"

    monkeypatch.setenv("AUGASSETS_EXECUTOR", "slurm")
    with pytest.raises(ValueError, match="AUGASSETS_EXECUTOR='slurm': the only value is k8s"):
        build_defs(get_profile("smoke"))


def _wait_for(predicate, what: str, timeout: float, logs: Path, poll: float = 1.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(poll)
    tails = "\n".join(f"== {log.name}\n{log.read_text()[-1500:]}" for log in sorted(logs.glob("*.log")))
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def _run_text(instance, run_id: str) -> str:
    """Every message and error of a run's event log, as text."""
    texts = []
    for record in instance.get_records_for_run(run_id, limit=10_000).records:
        entry = record.event_log_entry
        texts.append(entry.user_message or "")
        if entry.dagster_event is not None:
            texts.append(entry.dagster_event.message or "")
            error = getattr(entry.dagster_event.event_specific_data, "error", None)
            if error is not None:
                texts.append(error.to_string())
    return "\n".join(texts)


def test_steps_run_on_celery_workers_and_a_worker_dying_mid_step_is_retried_twice_then_left_to_the_next_tick(
    benchmark_run, tmp_path, monkeypatch
):
    """The smoke benchmark (real_p, real_2p) through the daemon, the run queue and two Celery workers
    (``gpu`` queue, concurrency 1; default queue): gpu-pool steps go to the gpu worker, the others to
    the default one. The gpu worker's process is killed (-9) each time it starts training a classifier,
    three times: the run fails with the worker's error, the daemon frees its pool slot and retries it
    from the failure, twice (``max_retries: 2``), and the second retry's failure is final
    (``dagster/will_retry: false``). The next cron tick's backfill requests the still-missing
    partitions, that run succeeds, and the scores equal the in-process run's, with no half-written
    table file."""
    import os
    import signal

    import dagster as dg

    profile, _ = benchmark_run
    home, logs = tmp_path / "home", tmp_path / "logs"
    logs.mkdir()
    processes = []
    kills = 1 + 2  # the run and its two retries
    with postgres() as url, redis() as broker:
        env = {
            **os.environ,
            "AUGASSETS_HOME": str(home),
            "AUGASSETS_PROFILE": "smoke",
            "AUGASSETS_METHODS": "real_p,real_2p",
            "AUGASSETS_POSTGRES_URL": url,
            "AUGASSETS_CELERY_BROKER": broker,
        }
        env.pop("DAGSTER_HOME", None)

        def start(name: str, *args: str):
            log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            processes.append(
                services.started(
                    subprocess.Popen(_augassets(*args), env=env, stdout=log, stderr=log, start_new_session=True)
                )
            )
            return processes[-1]

        try:
            start("gpu_worker", "worker", "--queue", "gpu", "--concurrency", "1", "--name", "gpu0")
            start("default_worker", "worker", "--queue", "dagster", "--concurrency", "1", "--name", "cpu0")
            start("daemon", "daemon", "--start", "scheduled_backfill")
            dagster_home = home / "smoke" / "dagster"
            _wait_for(lambda: (dagster_home / "dagster.yaml").is_file(), "the Dagster home", 120, logs)
            monkeypatch.setenv("AUGASSETS_POSTGRES_URL", url)
            instance = dg.DagsterInstance.from_config(str(dagster_home))
            gpu_log = logs / "gpu_worker.log"

            def training(run_id: str | None = None) -> tuple[str, int] | None:
                """The run whose classifier step the gpu worker is in now (``run_id``'s, if given), and the
                pid of the process that runs the step (Dagster's log line names it)."""
                text = gpu_log.read_text()
                started = re.findall(r" - ([0-9a-f-]{36}) - (\d+) - classifier_scores - STEP_START", text)
                ended = set(
                    re.findall(r" - ([0-9a-f-]{36}) - (?:\d+ - )?classifier_scores - STEP_(?:SUCCESS|FAILURE)", text)
                )
                running = [(r, int(pid)) for r, pid in started if r not in ended]
                return next((found for found in running if run_id in (None, found[0])), None)

            def retry_of(run_id: str) -> str | None:
                children = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/parent_run_id": run_id}))
                return children[0].run_id if children else None

            def kill_while_training(run_id: str | None, what: str) -> str:
                """Kill (-9) the gpu worker's pool process while ``run_id``'s (any run's) classifier step runs
                in it: the process whose pid the step's STEP_START line names (Celery replaces its pool
                process after a kill, so a pid looked up earlier may be gone). A smoke classifier step lasts
                about a second, so the log is polled every 20 ms."""
                training_run, pid = _wait_for(lambda: training(run_id), what, 600, logs, poll=0.02)
                os.kill(pid, signal.SIGKILL)
                return training_run

            # The run, then each retry of it: killed while it trains (the other method's run is left alone).
            chain = [kill_while_training(None, "a classifier step on the gpu worker")]
            for attempt in range(1, kills):
                chain.append(_wait_for(lambda: retry_of(chain[-1]), f"retry {attempt} of run {chain[-1]}", 300, logs))
                kill_while_training(chain[-1], f"retry {attempt}'s classifier step on the gpu worker")

            def finished():
                runs = instance.get_runs()
                done = instance.get_latest_materialization_event(dg.AssetKey("results_table")) is not None
                return done and runs and all(run.is_finished for run in runs) and runs

            runs = _wait_for(finished, "the results table and every run to finish", 600, logs)
            by_id = {run.run_id: run for run in runs}
            failed = [run for run in runs if run.status == dg.DagsterRunStatus.FAILURE]
            assert sorted(run.run_id for run in failed) == sorted(chain), [
                (run.run_id, run.status, run.tags) for run in runs
            ]
            assert [by_id[r].tags.get("dagster/retry_number", "0") for r in chain] == ["0", "1", "2"]
            assert [by_id[r].tags.get("dagster/will_retry") for r in chain] == ["true", "true", "false"]
            assert retry_of(chain[-1]) is None, "no third retry"
            final = _run_text(instance, chain[-1])
            assert "WorkerLostError" in final and "signal 9" in final, final[-3000:]
            # The chain's partitions stayed missing; a later run (the next cron tick's backfill, whatever range
            # it drew them in) trained them.
            created = {record.dagster_run.run_id: record.create_timestamp for record in instance.get_run_records()}
            chain_range = [by_id[chain[0]].tags[f"dagster/asset_partition_range_{end}"] for end in ("start", "end")]
            for key in chain_range:
                records = instance.fetch_materializations(
                    dg.AssetRecordsFilter(dg.AssetKey("classifier_scores"), asset_partitions=[key]), limit=1
                ).records
                assert records, f"classifier_scores[{key}] was never trained"
                trained_by = by_id[records[0].run_id]
                assert trained_by.status == dg.DagsterRunStatus.SUCCESS
                assert created[trained_by.run_id] > created[chain[-1]], "trained after the chain's last run"
            submitted = "\n".join(_run_text(instance, run.run_id) for run in runs)
            assert 'Submitting celery task for step "classifier_scores" to queue "gpu"' in submitted
            assert 'Submitting celery task for step "dataset_splits" to queue "dagster"' in submitted
            assert not instance.event_log_storage.get_concurrency_run_ids(), "no pool slot stays held"
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    tables = home / "smoke" / "store" / "tables"
    assert not [p for p in tables.rglob("*") if p.is_file() and p.suffix != ".parquet"], (
        "no temporary or partial table file"
    )
    expected = Warehouse(profile.tables).query(SCORES)
    got = Warehouse(tables).query(SCORES)
    assert got.height == 4 and got.equals(expected)


@pytest.fixture(autouse=True)
def _no_service_left_behind():
    """Every test here stops what it started: no PostgreSQL, Redis or Celery worker it started survives
    it, failed or not. Counted by process group (each server and worker is started in a session of its
    own), so services of tests running at the same time on other pytest workers are not its."""
    services.STARTED_GROUPS.clear()
    yield
    left = services.survivors()
    assert not left, f"processes of the services this test started are still running: {left}"
