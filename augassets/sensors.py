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
- ``damaged_outputs``: the daemon's side of ``augassets benchmark``'s integrity check (integrity.py):
  each evaluation finds the materialized partitions whose files are gone or changed size, records
  each finding on its asset and requests one run per damaged partition (a failed repair is not
  retried for the same damage until the asset is materialized again).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import dagster as dg

from .core.catalog import usable_classes
from .core.datasets import DatasetError
from .core.wordnet import WordNetError
from .dagster_internals import repository_asset_graph
from .integrity import find_damage, record_damage
from .partitions import CLASS_PARTITIONS_NAME, class_partitions
from .profiles import Profile
from .resources import ImageStoreResource, WarehouseResource


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


def damaged_outputs(profile: Profile, targets: Sequence[dg.AssetKey]) -> dg.SensorDefinition:
    spec = profile.automation

    @dg.sensor(
        name="damaged_outputs",
        asset_selection=dg.AssetSelection.assets(*targets),
        minimum_interval_seconds=spec.interval_s,
        default_status=_status(spec.repair_on),
        description=f"Finds profile {profile.name}'s materialized partitions whose files are missing or changed "
        "on disk, records each finding on its asset and requests a run that rebuilds the partition.",
    )
    def damaged_outputs_sensor(
        context: dg.SensorEvaluationContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ):
        db = warehouse.get()
        for moved in db.check_files():
            context.log.warning(f"damaged table file moved aside: {moved}")
        items = find_damage(repository_asset_graph(context), context.instance, targets, db, image_store.store())
        if not items:
            return dg.SensorResult(skip_reason=f"no damaged outputs among {len(targets)} assets", cursor="[]")
        requests, keys = [], []
        for item in items:
            latest = context.instance.get_latest_materialization_event(item.asset)
            written = "" if latest is None else f"{latest.timestamp:.3f}"
            key = hashlib.sha256(f"{item.asset.to_user_string()}|{item.partition}|{written}".encode()).hexdigest()[:16]
            keys.append(key)
            requests.append(
                dg.RunRequest(
                    run_key=f"repair-{key}",
                    asset_selection=[item.asset],
                    partition_key=None if item.partition is None else str(item.partition),
                    tags={"augassets/repair": item.asset.to_user_string()},
                )
            )
        seen = set(json.loads(context.cursor or "[]"))
        fresh = [item for item, key in zip(items, keys) if key not in seen]
        record_damage(context.instance, fresh)
        for item in fresh:
            context.log.warning(f"{item.asset.to_user_string()} {item}: rebuilding")
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(sorted(set(keys))))

    return damaged_outputs_sensor
