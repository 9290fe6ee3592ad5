"""The headless command: materialize what is stale among a selection of assets, on one home.

``materialize`` holds the home's lock (one command at a time per home), releases the runs of a command
that died, repairs outputs missing on disk (``integrity``), resumes what an earlier command requested
and did not finish, then evaluates the assets' automation conditions and runs what they request
(``runner.runs``), here or on worker processes (``runner.workers``), until nothing is requested.
``cli`` parses the arguments; this module is what ``augassets benchmark`` and ``foundation`` do.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg

from .. import dagster_internals, integrity
from ..build import build_defs
from ..core.warehouse import Warehouse, migrate_catalog
from ..executors import GPU_POOL
from ..instance import ensure_dagster_home
from ..partitions import CLASS_PARTITIONS_NAME
from ..profiles import Profile
from ..resources import default_resources
from ..tags import ASSETS_TAG
from . import runs as runner
from .workers import WorkerDied, Workers

MAX_ROUNDS = 50  # evaluations per command; the graph is a dozen levels deep, so reaching this means a loop


def all_partitions(
    defs: dg.Definitions, instance: dg.DagsterInstance, keys: list[dg.AssetKey]
) -> dict[dg.AssetKey, set]:
    """Every current partition of ``keys`` ({None} for an unpartitioned asset): what --force rebuilds."""
    graph = defs.resolve_asset_graph()
    found = {}
    for key in keys:
        partitions_def = graph.get(key).partitions_def
        partitions = (
            {None}
            if partitions_def is None
            else set(partitions_def.get_partition_keys(dynamic_partitions_store=instance))
        )
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
            instance.report_runless_asset_event(
                dg.AssetMaterialization(key, description="external: as configured by the profile")
            )


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
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_PROGRESS))):
        if ASSETS_TAG in run.tags:
            instance.report_run_failed(run, "its headless command died; marked failed by the next command on this home")
            released.append(run.run_id)
    for run_id in sorted(dagster_internals.runs_holding_pool_slots(instance)):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            dagster_internals.free_pool_slots(instance, run_id)
            if run_id not in released:
                released.append(run_id)
    for run_id in released:
        say(f"- released run {run_id}: it ended without finishing (its process died); its pool slots are free")
    return released


def materialize(
    profile: Profile,
    select: Callable[[dg.Definitions], list[dg.AssetKey]],
    force: bool = False,
    say=print,
    verify: bool = False,
) -> None:
    """Materialize what is stale among ``select(defs)``: evaluate the assets' automation conditions,
    run what they request, and evaluate again until nothing is requested (runner/runs.py). ``force``:
    every partition of every selected asset is requested on the first evaluation. ``verify``: the
    integrity check compares every written file's SHA-256, not only its size (integrity.py)."""
    with home_lock(profile):
        try:
            if profile.workers > 1:
                with Workers(profile, profile.workers) as workers:
                    _materialize(profile, select, force, say, workers, verify)
            else:
                _materialize(profile, select, force, say, verify=verify)
        finally:
            write_catalog_views(profile, say)


def widen_gpu_pool(instance: dg.DagsterInstance, workers: int, device: str, say=print) -> None:
    """On the CPU, let ``workers`` steps of the ``gpu`` pool run at once (Profile.workers); a larger
    limit set by hand (``dagster instance concurrency set gpu N``) is kept. On a GPU the pool keeps
    its limit: one step per GPU, whatever the worker count."""
    if device != "cpu":
        say(f"- pool {GPU_POOL}: its limit stays as set (device {device}: one step per GPU); the workers share it")
        return
    if dagster_internals.pool_limit(instance, GPU_POOL) < workers:  # 0 while the pool has no limit yet
        dagster_internals.set_pool_limit(instance, GPU_POOL, workers)
        say(f"- pool {GPU_POOL}: limit raised to {workers} (the profile's workers, on the CPU)")


def write_catalog_views(profile: Profile, say=print) -> None:
    """``catalog.duckdb``: a view per table over its Parquet files, for ``duckdb catalog.duckdb``.
    Rebuilt after every command; an extra, so a failure to write it is said, not raised."""
    try:
        Warehouse(profile.tables).write_views(profile.catalog)
    except Exception as error:  # noqa: BLE001 - the tables are the state; the views file is a convenience
        say(
            f"- {profile.catalog.name}: the views could not be written ({error}); the tables in "
            f"{profile.tables} are unaffected"
        )


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
        say(
            f"- {profile.catalog.name} could not be opened ({str(error).splitlines()[0][:160]}); moved to "
            f"{aside.name}: what it held is rebuilt"
        )
        return
    if moved:
        say(
            f"- {profile.catalog.name}: {len(moved)} tables of an earlier version moved to Parquet files in "
            f"{profile.tables}"
        )


def _materialize(
    profile: Profile,
    select: Callable[[dg.Definitions], list[dg.AssetKey]],
    force: bool,
    say,
    workers: Workers | None = None,
    verify: bool = False,
) -> None:
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
        say(
            "- resuming what an earlier command requested and did not finish: "
            + ", ".join(f"{key.to_user_string()} ({len(p)})" for key, p in pending.items())
        )
    if force:
        for key, partitions in current.items():
            pending[key] = pending.get(key, set()) | partitions
    for key, partitions in integrity.damaged_partitions(
        defs, instance, keys, default_resources(profile), say, verify
    ).items():
        pending[key] = pending.get(key, set()) | partitions
    cursor = runner.load_cursor(dagster_home, say)
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
        together = (
            [g for g in groups if g.partitions is not None and len(g.partitions) > 1] if workers is not None else []
        )
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
        raise SystemExit(
            f"still requested after {MAX_ROUNDS} rounds: {names} — a run succeeded without materializing what "
            "its automation condition asks for; see the latest runs in the UI (`augassets ui`)"
        )
    for key in keys:
        if key not in ran:
            say(f"- {key.to_user_string()}: up to date")
