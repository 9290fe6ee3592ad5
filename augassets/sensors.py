"""The daemon's sensors for a profile (``AutomationSpec`` sets their cadence and default status).

- ``scheduled_backfill``: Dagster's automation-condition sensor over the benchmark's assets. Each
  evaluation requests what the assets' conditions request (conditions.py) and launches it as one
  backfill, through the run queue and the ``gpu`` pool. New work (missing partitions,
  changed code versions) waits for the profile's cron tick; what an update makes stale downstream
  follows at once. Nothing is requested for a partition that is running, alone or in a backfill.
- ``new_classes``: registers the classes the dataset gained (a new class folder, a raised
  ``max_classes``) as class partitions and requests the catalog and splits run that adds their rows;
  the automation then builds exactly the new class × method partitions. A class folder whose name is
  not a WordNet id is skipped, with its reason in the tick's log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import dagster as dg

from .core.catalog import usable_classes
from .core.datasets import DatasetError
from .core.wordnet import WordNetError
from .partitions import CLASS_PARTITIONS_NAME, class_partitions
from .profiles import Profile


def _status(on: bool) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if on else dg.DefaultSensorStatus.STOPPED


def scheduled_backfill(profile: Profile, targets: Sequence[dg.AssetKey]) -> dg.AutomationConditionSensorDefinition:
    spec = profile.automation
    return dg.AutomationConditionSensorDefinition(
        "scheduled_backfill",
        target=dg.AssetSelection.assets(*targets),
        emit_backfills=True,
        minimum_interval_seconds=spec.interval_s,
        default_status=_status(spec.backfill_on),
        description=f"Backfills every missing or changed partition of profile {profile.name} at each tick of "
        f"{spec.cron} ({spec.cron_timezone}), then what lies downstream as its upstream updates.",
    )


def new_classes(profile: Profile, catalog_assets: Sequence[dg.AssetsDefinition]) -> dg.SensorDefinition:
    spec = profile.automation

    @dg.sensor(
        name="new_classes",
        target=list(catalog_assets),
        minimum_interval_seconds=spec.interval_s,
        default_status=_status(spec.new_classes_on),
        description=f"Registers the classes that profile {profile.name}'s dataset gained as class partitions and "
        "refreshes the catalog and splits; class folders that are not WordNet ids are skipped and logged.",
    )
    def new_classes_sensor(context: dg.SensorEvaluationContext):
        try:
            entries, skipped = usable_classes(profile.dataset, profile.max_classes)
        except (OSError, DatasetError, WordNetError) as error:
            return dg.SkipReason(f"cannot list the classes of profile {profile.name}: {error}")
        for item in skipped:
            context.log.warning(f"class folder {item.folder!r} skipped: {item.reason}")
        known = set(context.instance.get_dynamic_partitions(CLASS_PARTITIONS_NAME))
        new = [entry.key for entry in entries if entry.key not in known]
        note = f" ({len(skipped)} class folders skipped, see the tick's log)" if skipped else ""
        if not new:
            return dg.SkipReason(f"no new classes: {len(known)} registered{note}")
        context.log.info(f"{len(new)} new classes: {', '.join(new[:20])}{' …' if len(new) > 20 else ''}{note}")
        key = hashlib.sha256(",".join(sorted(new)).encode()).hexdigest()[:16]
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"new-classes-{key}", tags={"augassets/new_classes": str(len(new))})],
            dynamic_partitions_requests=[class_partitions.build_add_request(new)],
        )

    return new_classes_sensor
