"""The package's calls outside Dagster's documented API, gathered here with why each is needed.

Everything else uses Dagster's public API (``dg.*``, ``DagsterInstance``'s public methods,
``dg.evaluate_automation_conditions``). The headless command runs without a daemon, so the
bookkeeping the daemon does for concurrency pools falls to it; Dagster documents that bookkeeping
only as CLI commands (``dagster instance concurrency …``) and daemon behaviour, so the command reaches
the instance's event-log storage for it. A sensor that checks the assets' declared outputs reads them
from the asset graph of the repository it runs in. Should a Dagster upgrade rename one of these, this
module is the one place to change; ``test_recovery.py`` (a killed command's slots freed, the pool
widened for the workers, the repair sensor) fails if one stops working.
"""

from __future__ import annotations

import dagster as dg


def runs_holding_pool_slots(instance: dg.DagsterInstance) -> set[str]:
    """The runs that hold a concurrency-pool slot. Why: a run whose process was killed keeps its slots,
    and every later step of that pool waits for them forever; the daemon's run monitoring frees them,
    but the headless command has no daemon and the public API has no listing of slot holders."""
    return set(instance.event_log_storage.get_concurrency_run_ids())


def free_pool_slots(instance: dg.DagsterInstance, run_id: str) -> None:
    """Free the pool slots ``run_id`` holds. Why: as above, what the daemon does for a run that ended
    without releasing them (``dagster instance concurrency`` frees slots from the shell only)."""
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def pool_limit(instance: dg.DagsterInstance, pool: str) -> int:
    """The pool's slot count (0 while it has no limit). Why: the CLI's ``dagster instance concurrency
    get`` has no Python counterpart in the public API."""
    return instance.event_log_storage.get_concurrency_info(pool).slot_count


def set_pool_limit(instance: dg.DagsterInstance, pool: str, slots: int) -> None:
    """Set the pool's slot count. Why: ``dagster instance concurrency set`` has no Python counterpart
    in the public API; the command widens the ``gpu`` pool to its worker count on the CPU."""
    instance.event_log_storage.set_concurrency_slots(pool, slots)


def repository_asset_graph(context: dg.SensorEvaluationContext):
    """The asset graph of the definitions a sensor runs in (each asset's metadata, partitions and
    materializability). Why: a sensor's context exposes its repository publicly, but the resolved graph
    only as the repository's ``asset_graph`` property; the sensor is made before the ``Definitions``
    whose public ``resolve_asset_graph`` would give the same graph."""
    return context.repository_def.asset_graph
