"""``augassets``: run the benchmark headless, or open the Dagster UI on the same instance.

``augassets benchmark`` materializes every asset of the profile's definitions that is stale by the
assets' own automation conditions (missing, code version changed, upstream updated — the conditions
the Dagster daemon evaluates too) and prints the results report. A rerun with nothing changed
launches no run and takes seconds. ``augassets ui`` opens the Dagster UI and ``augassets daemon``
runs the daemon (the ``scheduled_backfill`` and ``new_classes`` sensors) on the same instance.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from . import integrity, scale
from .build import benchmark_keys, build_defs
from .core.files import write_bytes_atomic
from .core.report import results_report
from .core.warehouse import Warehouse, migrate_catalog
from .instance import ensure_dagster_home
from .partitions import CLASS_PARTITIONS_NAME
from .profiles import PROFILE_ENV, WORLD_ENV, Profile, get_profile
from .resources import default_resources
from .runner import runs as runner
from .runner.workers import WorkerDied, Workers
from .scale import GPU_POOL
from .tags import ASSETS_TAG

# The backfill policy and partition mapping APIs are marked beta; the notice adds nothing to a run log.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

MAX_ROUNDS = 50  # evaluations per command; the graph is a dozen levels deep, so reaching this means a loop


def foundation_keys(defs: dg.Definitions) -> list[dg.AssetKey]:
    """The mini world's foundation (group ``foundation`` and the fidelity classifier) and what it reads."""
    graph = defs.resolve_asset_graph()
    selection = (dg.AssetSelection.groups("foundation") | dg.AssetSelection.assets("fidelity_classifier")).upstream()
    chosen = selection.resolve(graph)
    return [key for key in graph.toposorted_asset_keys if key in chosen and graph.get(key).is_executable]


def all_partitions(defs: dg.Definitions, instance: dg.DagsterInstance, keys: list[dg.AssetKey]) -> dict[dg.AssetKey, set]:
    """Every current partition of ``keys`` ({None} for an unpartitioned asset): what --force rebuilds."""
    graph = defs.resolve_asset_graph()
    found = {}
    for key in keys:
        partitions_def = graph.get(key).partitions_def
        partitions = {None} if partitions_def is None else set(partitions_def.get_partition_keys(dynamic_partitions_store=instance))
        if partitions:
            found[key] = partitions
    return found


def report_external_assets(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """Record external assets (real weights, a remote index) as present, once: their downstream
    conditions wait for every upstream to exist."""
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_executable and instance.get_latest_materialization_event(key) is None:
            instance.report_runless_asset_event(dg.AssetMaterialization(key, description="external: as configured by the profile"))


LOCK_FILE = "augassets.lock"


@contextmanager
def home_lock(profile: Profile) -> Iterator[None]:
    """One headless command at a time per profile home: a second one stops at once, naming the first
    (two would race on the same partitions and on the Dagster instance's first migration). The lock is
    the kernel's (``flock``), so it dies with its process: a killed command never blocks the next."""
    profile.home.mkdir(parents=True, exist_ok=True)
    handle = open(profile.home / LOCK_FILE, "a+")  # noqa: SIM115 - held until the with block ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process"
        handle.close()
        raise SystemExit(
            f"another augassets command is running on {profile.home} ({holder}); wait for it to finish, or set "
            "AUGASSETS_HOME to another folder"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


IN_PROGRESS = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)


def release_dead_runs(instance: dg.DagsterInstance, say=print) -> list[str]:
    """Runs of a headless command that died (kill -9, power loss) stay "in progress" and keep their
    concurrency-pool slots, so every later step of that pool would wait forever. Called under the home
    lock, when no other headless command is alive: such runs are marked failed, and the slots of
    every finished run are freed. Runs the daemon or the UI launched are left to them."""
    released = []
    storage = instance.event_log_storage
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_PROGRESS))):
        if ASSETS_TAG in run.tags:
            instance.report_run_failed(run, "its headless command died; marked failed by the next command on this home")
            released.append(run.run_id)
    for run_id in storage.get_concurrency_run_ids():
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            storage.free_concurrency_slots_for_run(run_id)
            if run_id not in released:
                released.append(run_id)
    for run_id in released:
        say(f"- released run {run_id}: it ended without finishing (its process died); its pool slots are free")
    return released


def materialize(profile: Profile, select: Callable[[dg.Definitions], list[dg.AssetKey]], force: bool = False, say=print) -> None:
    """Materialize what is stale among ``select(defs)``: evaluate the assets' automation conditions,
    run what they request, and evaluate again until nothing is requested (runner/runs.py). ``force``:
    every partition of every selected asset is requested on the first evaluation."""
    with home_lock(profile):
        try:
            if profile.workers > 1:
                with Workers(profile, profile.workers) as workers:
                    _materialize(profile, select, force, say, workers)
            else:
                _materialize(profile, select, force, say)
        finally:
            write_catalog_views(profile, say)


def widen_gpu_pool(instance: dg.DagsterInstance, workers: int, device: str, say=print) -> None:
    """On the CPU, let ``workers`` steps of the ``gpu`` pool run at once (Profile.workers); a larger
    limit set by hand (``dagster instance concurrency set gpu N``) is kept. On a GPU the pool keeps
    its limit: one step per GPU, whatever the worker count."""
    if device != "cpu":
        say(f"- pool {GPU_POOL}: its limit stays as set (device {device}: one step per GPU); the workers share it")
        return
    storage = instance.event_log_storage
    if storage.get_concurrency_info(GPU_POOL).slot_count < workers:  # 0 while the pool has no limit yet
        storage.set_concurrency_slots(GPU_POOL, workers)
        say(f"- pool {GPU_POOL}: limit raised to {workers} (the profile's workers, on the CPU)")


def write_catalog_views(profile: Profile, say=print) -> None:
    """``catalog.duckdb``: a view per table over its Parquet files, for ``duckdb catalog.duckdb``.
    Rebuilt after every command; an extra, so a failure to write it is said, not raised."""
    try:
        Warehouse(profile.tables).write_views(profile.catalog)
    except Exception as error:  # noqa: BLE001 - the tables are the state; the views file is a convenience
        say(f"- {profile.catalog.name}: the views could not be written ({error}); the tables in {profile.tables} are unaffected")


def migrate_old_catalog(profile: Profile, say=print) -> None:
    """A home written by versions that kept every table in ``catalog.duckdb``: its tables become
    Parquet files (split by partition), so nothing is recomputed; a file DuckDB cannot open is moved
    aside and what it held is rebuilt."""
    import duckdb

    try:
        moved = migrate_catalog(profile.catalog, Warehouse(profile.tables))
    except duckdb.Error as error:
        aside = profile.catalog.with_name(profile.catalog.name + ".damaged")
        os.replace(profile.catalog, aside)
        say(f"- {profile.catalog.name} could not be opened ({str(error).splitlines()[0][:160]}); moved to {aside.name}: what it held is rebuilt")
        return
    if moved:
        say(f"- {profile.catalog.name}: {len(moved)} tables of an earlier version moved to Parquet files in {profile.tables}")


def _materialize(profile: Profile, select: Callable[[dg.Definitions], list[dg.AssetKey]], force: bool, say,
                 workers: Workers | None = None) -> None:
    dagster_home = ensure_dagster_home(profile)
    defs = build_defs(profile, daemon=False)
    instance = dg.DagsterInstance.get()
    keys = select(defs)
    say(f"augassets: profile {profile.name}, state in {profile.home}")
    release_dead_runs(instance, say)
    if workers is not None:
        widen_gpu_pool(instance, workers.count, default_resources(profile)["compute"].device, say)
    migrate_old_catalog(profile, say)
    report_external_assets(defs, instance)
    ran: set[dg.AssetKey] = set()
    catalog = dg.AssetKey("class_catalog")
    if catalog in keys and not instance.get_dynamic_partitions(CLASS_PARTITIONS_NAME):
        # The class partitions are the catalog's rows: until it exists, "every partition" means none.
        say("- class_catalog: materializing (it defines the class partitions)")
        runner.execute(defs, instance, runner.RunGroup((catalog,), None), say)
        ran.add(catalog)
    # Partitions to run whatever their conditions say, kept until they have run: what an earlier
    # command requested and did not run (it was killed or failed), with --force every partition, always
    # those whose outputs are missing on disk (integrity.py), and what each evaluation requests (an
    # asset that waits for its upstream in one round runs in a later one). Written before anything runs.
    current = all_partitions(defs, instance, keys)
    pending, aside = runner.load_pending(dagster_home, current)
    if pending:
        say("- resuming what an earlier command requested and did not finish: "
            + ", ".join(f"{key.to_user_string()} ({len(p)})" for key, p in pending.items()))
    if force:
        for key, partitions in current.items():
            pending[key] = pending.get(key, set()) | partitions
    for key, partitions in integrity.damaged_partitions(defs, instance, keys, default_resources(profile), say).items():
        pending[key] = pending.get(key, set()) | partitions
    cursor = runner.load_cursor(dagster_home)
    for _ in range(MAX_ROUNDS):
        requested, cursor = runner.evaluate(defs, instance, keys, cursor)
        for key, partitions in requested.items():
            pending[key] = pending.get(key, set()) | partitions
        runner.save_pending(dagster_home, pending, aside)  # before the cursor: a kill between them loses nothing
        runner.save_cursor(dagster_home, cursor)
        if not pending:
            break
        requested = {key: set(partitions) for key, partitions in pending.items()}

        def done(group: runner.RunGroup) -> None:
            ran.update(group.keys)
            for key in group.keys:
                left = pending.get(key, set()) - ({None} if group.partitions is None else set(group.partitions))
                if left:
                    pending[key] = left
                else:
                    pending.pop(key, None)
            runner.save_pending(dagster_home, pending, aside)

        groups = runner.plan_runs(defs, requested)
        # With workers, the round's groups over several partitions run at once (they do not depend on
        # each other), after its other groups, which run here one by one.
        together = [g for g in groups if g.partitions is not None and len(g.partitions) > 1] if workers is not None else []
        for group in [g for g in groups if g not in together]:
            started = time.perf_counter()
            say(f"- {', '.join(group.names)}: materializing")
            try:
                runner.execute(defs, instance, group, say)
            except runner.RunFailed as error:
                raise SystemExit(str(error)) from None
            done(group)
            say(f"  done in {time.perf_counter() - started:.1f} s")
        if together:
            started = time.perf_counter()
            say(f"- {' | '.join(', '.join(g.names) for g in together)}: materializing")
            try:
                outcomes = runner.execute_on_workers(defs, instance, together, say, workers)
            except WorkerDied as error:
                raise SystemExit(str(error)) from None
            for outcome in outcomes:
                if outcome.error is None:
                    done(outcome.group)
            failed = [outcome.error for outcome in outcomes if outcome.error]
            if failed:
                raise SystemExit(" || ".join(failed))
            say(f"  done in {time.perf_counter() - started:.1f} s")
    else:
        names = ", ".join(key.to_user_string() for key in requested)
        raise SystemExit(f"still requested after {MAX_ROUNDS} rounds: {names} — a run succeeded without materializing what "
                         "its automation condition asks for; see the latest runs in the UI (`augassets ui`)")
    for key in keys:
        if key not in ran:
            say(f"- {key.to_user_string()}: up to date")


def benchmark(profile: Profile, force: bool = False, say=print) -> str:
    """Materialize what the profile's results table needs and return the table as markdown."""
    started = time.perf_counter()
    materialize(profile, benchmark_keys, force, say)
    table = results_report(Warehouse(profile.tables), profile.paper_reference)
    say(f"\nResults ({profile.name}, {time.perf_counter() - started:.0f} s):\n\n{table}\n")
    report = Path(profile.store_root) / "reports" / "report.html"
    if report.is_file():
        say(f"Report with figures: {report}\n")
    return table


CALIBRATION_FIGURES = {  # figures of the world a manifest records beside its files: asset → metadata keys
    "clip_model": ("zero_shot_top1", "zero_shot_top1_ensemble"),
    "fidelity_judge": ("judge_top1_test", "judge_top1_holdout_web"),
    "domain_transfer": ("domain_transfer_ratio",),
    "diffusion_fidelity": ("class_fidelity", "relative_class_fidelity", "target_recognizability"),
}


def _plain(value):
    """A metadata value as JSON can hold it (numbers, strings, lists of numbers), or None."""
    value = getattr(value, "value", value)
    if isinstance(value, (int, float, str)) or (isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)):
        return value
    return None


def export_world(profile: Profile, name: str, say=print) -> Path:
    """Copy the world this home trained (``augassets foundation --rebuild``) into the package as the
    shipped world ``name``, with its manifest. Every shipped asset must have been trained here by the
    current definitions; the figures of its materialization go into the manifest."""
    import datetime

    from .assets.foundation import SHIPPED_FILES, lineage_versions
    from .core.files import atomic_folder
    from .core.world import STORED_DTYPE, export_asset, world_folder, write_manifest

    if profile.world is None:
        raise SystemExit(f"profile {profile.name} has no mini world to export")
    ensure_dagster_home(profile)
    defs = build_defs(profile, daemon=False)
    graph = defs.resolve_asset_graph()
    instance = dg.DagsterInstance.get()

    def latest(asset: str):
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return event.asset_materialization if event else None

    for asset in SHIPPED_FILES:
        made = latest(asset)
        version = graph.get(dg.AssetKey(asset)).code_version
        if made is None or _plain(made.metadata.get("source")) != "trained here" or made.tags.get("dagster/code_version") != version:
            raise SystemExit(f"{asset}: no materialization trained here by the current definitions (code version {version}) on "
                             f"{profile.home}; train the world first: AUGASSETS_PROFILE={profile.name} augassets foundation --rebuild")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:  # no git on this machine: the manifest says so
        commit = ""
    world = profile.world
    manifest = {
        "world": name,
        "profile": profile.name,
        "command": f"AUGASSETS_PROFILE={profile.name} augassets foundation --rebuild && augassets world export --name {name}",
        "commit": commit or "unknown",
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "stored_dtype": STORED_DTYPE,
        "settings": {"target": repr(profile.dataset.target), "split": repr(profile.split), "pool": repr(world.pool),
                     "clip": repr(world.clip), "diffusion": repr(world.diffusion), "classifier": repr(profile.classifier)},
        "calibration": {
            f"{asset}.{key}": _plain(latest(asset).metadata[key])
            for asset, keys in CALIBRATION_FIGURES.items() if latest(asset) for key in keys if key in latest(asset).metadata
        },
        "assets": {},
    }
    store = Path(profile.store_root)
    final = world_folder(name)
    with atomic_folder(final) as tmp:
        for asset, parts in SHIPPED_FILES.items():
            figures = {k: _plain(v) for k, v in latest(asset).metadata.items() if k != "source" and _plain(v) is not None}
            manifest["assets"][asset] = export_asset(asset, store.joinpath(*parts), tmp, lineage_versions(graph, dg.AssetKey(asset)), figures)
            say(f"- {asset}: {len(manifest['assets'][asset]['files'])} files")
        write_manifest(tmp, manifest)
    total = sum(f["bytes"] for entry in manifest["assets"].values() for f in entry["files"].values())
    say(f"shipped world {name}: {total / 1e6:.1f} MB in {final}")
    return final


def _dagster_command(name: str) -> str:
    """``dagster`` / ``dagster-daemon`` of the environment running this command (no activated venv needed)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def _workspace_args() -> list[str]:
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    return ["-w", str(workspace)] if workspace.is_file() else ["-m", "augassets.definitions"]


def run_in_foreground(command: list[str]) -> int:
    """Run ``command`` until it ends, passing SIGINT and SIGTERM on to it, so that stopping this
    process stops what it started (``dagster dev`` then stops its webserver, daemon and code server)."""
    process = subprocess.Popen(command)

    def forward(signum, _frame):
        process.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    return process.wait()


def ui(profile: Profile, port: int, host: str) -> int:
    home = ensure_dagster_home(profile)
    os.environ[PROFILE_ENV] = profile.name
    print(f"Dagster UI for profile {profile.name} on http://{host}:{port} (DAGSTER_HOME={home})", flush=True)
    return run_in_foreground([_dagster_command("dagster"), "dev", "-h", host, "-p", str(port), *_workspace_args()])


SENSORS = ("scheduled_backfill", "new_classes")


def daemon(profile: Profile, start: list[str]) -> int:
    """``dagster-daemon run`` on the profile's instance, after starting the sensors named in ``start``."""
    home = ensure_dagster_home(profile)
    os.environ[PROFILE_ENV] = profile.name
    for name in start:
        subprocess.run([_dagster_command("dagster"), "sensor", "start", name, *_workspace_args()], check=True)
    spec = profile.automation
    print(f"Dagster daemon for profile {profile.name} (DAGSTER_HOME={home}); backfills at {spec.cron} ({spec.cron_timezone})", flush=True)
    return run_in_foreground([_dagster_command("dagster-daemon"), "run", *_workspace_args()])


def worker(profile: Profile, queue: str, concurrency: int, name: str | None) -> int:
    """A Celery worker serving ``queue`` (``gpu`` or ``dagster``) for the runs of this profile's
    instance: ``dagster-celery worker start`` with the executor's own configuration (scale.py). One per
    GPU on the ``gpu`` queue with concurrency 1, its device chosen by ``CUDA_VISIBLE_DEVICES``."""
    broker = scale.celery_broker()
    if not broker:
        raise SystemExit(f"augassets worker: set {scale.CELERY_BROKER_ENV} to the broker's Redis URL (e.g. redis://127.0.0.1:6379/0); "
                         "the webserver and the daemon need the same setting")
    scale.check_broker(broker)
    home = ensure_dagster_home(profile)
    os.environ[PROFILE_ENV] = profile.name
    config = home / "celery_worker.yaml"
    write_bytes_atomic(scale.worker_yaml().encode(), config)
    # dagster-celery starts `celery` from PATH: this environment's, activated or not.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    name = name or f"{queue}-{os.getpid()}"
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
    print(f"Celery worker {name} on queue {queue} (concurrency {concurrency}, CUDA_VISIBLE_DEVICES={devices}) for profile "
          f"{profile.name}; broker {scale.redacted(broker)}", flush=True)
    return run_in_foreground([_dagster_command("dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(config),
                              "-q", queue, "-n", name, "--", f"--concurrency={concurrency}", "--pool=prefork"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="augassets", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help=f"profile name (default: ${PROFILE_ENV} or mini)")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("benchmark", help="materialize the benchmark headless and print the results table")
    bench.add_argument("--force", action="store_true", help="rebuild every stage even if it is up to date")
    found = sub.add_parser("foundation", help="materialize the mini world's pool, CLIP, KNN index and Stable Diffusion")
    found.add_argument("--force", action="store_true", help="rebuild every stage even if it is up to date")
    found.add_argument("--rebuild", action="store_true", help="train the mini world's models from scratch instead of installing the "
                       "shipped world (implies --force)")
    world_parser = sub.add_parser("world", help="the shipped mini world: export the world this home trained into the package")
    world_parser.add_argument("action", choices=["export"])
    world_parser.add_argument("--name", default="v2", help="the world's folder under augassets/world (default v2), or a path")
    ui_parser = sub.add_parser("ui", help="open the Dagster UI (dagster dev) on this profile's instance")
    ui_parser.add_argument("--port", type=int, default=3000)
    ui_parser.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    daemon_parser = sub.add_parser("daemon", help="run the Dagster daemon (sensors, backfills, run queue) on this profile's instance")
    daemon_parser.add_argument("--start", nargs="*", choices=SENSORS, default=[], metavar="SENSOR",
                               help=f"start these sensors first ({', '.join(SENSORS)}); they stay started")
    worker_parser = sub.add_parser("worker", help="run a Celery worker for the steps of launched runs (AUGASSETS_CELERY_BROKER)")
    worker_parser.add_argument("--queue", default=scale.GPU_QUEUE, choices=[scale.GPU_QUEUE, scale.DEFAULT_QUEUE],
                               help="gpu: training, fine-tuning, generation (one worker per GPU); dagster: every other step")
    worker_parser.add_argument("--concurrency", type=int, default=1, help="steps at once (gpu queue: 1 per GPU)")
    worker_parser.add_argument("--name", help="worker name (default: <queue>-<pid>)")
    args = parser.parse_args(argv)
    if args.command == "worker":  # before the model libraries: a worker imports them per task
        if args.profile:
            os.environ[PROFILE_ENV] = args.profile
        return worker(get_profile(), args.queue, args.concurrency, args.name)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Per-checkpoint "Loading weights" / "Loading pipeline components" bars drown the run log.
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    if args.profile:
        os.environ[PROFILE_ENV] = args.profile
    if args.command == "foundation" and args.rebuild:
        os.environ[WORLD_ENV] = "train"  # also read by worker processes
    profile = get_profile()
    if args.command == "world":
        export_world(profile, args.name)
        return 0
    if args.command == "benchmark":
        benchmark(profile, force=args.force)
        return 0
    if args.command == "foundation":
        started = time.perf_counter()
        if profile.world is None:
            raise SystemExit(f"profile {profile.name} has no mini world: its pool, CLIP, index and SD are external assets")
        materialize(profile, foundation_keys, force=args.force or args.rebuild)
        print(f"foundation ready in {time.perf_counter() - started:.0f} s: {profile.home / 'store' / 'models'}")
        return 0
    if args.command == "daemon":
        return daemon(profile, args.start)
    return ui(profile, args.port, args.host)


if __name__ == "__main__":
    sys.exit(main())
