"""Definition-time automation: one notion of stale, Dagster's own.

Every asset carries an automation condition built by ``stale_condition``: true for a partition that
is missing, whose code version changed, or one of whose upstream assets was updated since it last
ran, unless it is running (alone or in a backfill) or an upstream is missing or running. In the
daemon's definitions new work (missing, code version changed) also waits for the profile's cron
tick. The daemon's ``scheduled_backfill`` sensor (sensors.py) and the headless runner
(``runner.runs.evaluate``) evaluate these same conditions through Dagster's public API.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

AC = dg.AutomationCondition


def stale_condition(
    ignore: Sequence[dg.AssetKey] = (),
    cron: str | None = None,
    cron_timezone: str = "UTC",
    by_data_version: Sequence[dg.AssetKey] = (),
) -> dg.AutomationCondition:
    """True for a partition that is missing, whose code version changed, or one of whose upstream
    assets was updated since it last ran — unless it is running (alone or in a backfill) or an
    upstream is missing or running.

    ``ignore``: upstream assets whose updates do not make this asset stale (a per-class asset and
    the catalog that gained a class: the class's own rows did not change). ``by_data_version``:
    upstream assets that count as updated only when their data version changed (they return one
    computed from their rows: a small table rewritten with the same rows changes nothing below).
    ``cron``: new work (missing, code version changed) waits for the cron's next tick; updates of an
    upstream are still followed at once, so a backfill's downstream does not wait a whole period."""
    ready = ~AC.in_progress() & ~AC.any_deps_missing() & ~AC.any_deps_in_progress()
    deps_updated = AC.any_deps_updated()
    if ignore or by_data_version:
        deps_updated = deps_updated.ignore(dg.AssetSelection.assets(*ignore, *by_data_version))
    if by_data_version:
        deps_updated = deps_updated | AC.any_deps_match(AC.data_version_changed()).allow(
            dg.AssetSelection.assets(*by_data_version)
        )
    upstream_updated = deps_updated.since_last_handled() & ready
    new_work = (AC.missing() | AC.code_version_changed().since_last_handled()) & ready
    label = "missing, code version changed or upstream updated"
    if cron:
        new_work = new_work & AC.cron_tick_passed(cron, cron_timezone).since_last_handled()
        label = f"upstream updated, or (missing or code version changed) since the tick of {cron} ({cron_timezone})"
    return (upstream_updated | new_work).with_label(label)


def with_automation(asset: dg.AssetsDefinition, condition: dg.AutomationCondition) -> dg.AssetsDefinition:
    """``asset`` with ``condition`` as its automation condition."""
    return dg.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=condition), [asset])[0]
