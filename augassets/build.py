"""``build_defs(profile)``: the study's Dagster definitions — assets (each with its automation
condition), checks, jobs, sensors and resources — for one profile, which the caller passes. The
profile carries everything get_profile read from the environment (its home, store, dataset root,
device and weights); the one thing read here is how steps execute (``executors.executor``: the Celery
broker or the Kubernetes executor), a property of the deployment that the webserver, the daemon and
every worker must share, and whose URLs dagster-celery itself reads from the environment at run time
so that passwords stay out of run configs."""

from __future__ import annotations

from types import SimpleNamespace

import dagster as dg

from . import executors, sensors
from .assets import (
    analyses,
    calibration,
    candidates,
    catalog,
    classifier,
    datasets,
    domain,
    duplicates,
    fidelity,
    finetuning,
    foundation,
    images,
    prompts,
    scaling,
    selection,
    splits,
)
from .conditions import stale_condition, with_automation
from .profiles import Profile
from .resources import default_resources

# Data-flow order: each builder may refer to the definitions of the builders before it.
BUILDERS = (
    catalog.build,
    splits.build,
    classifier.build_fidelity_classifier,
    foundation.build,
    calibration.build,
    foundation.build_fidelity,
    prompts.build,
    finetuning.build,
    candidates.build,
    selection.build,
    images.build,
    fidelity.build,
    scaling.build_images,
    domain.build,
    duplicates.build,
    datasets.build,
    classifier.build,
    scaling.build,
    analyses.build,
)


# Built by `augassets foundation`, never by the benchmark: a property of the world, no method's input.
CALIBRATION_ONLY = ("domain_oracle",)
# Per class × method assets: the catalog and splits gaining a class does not change a class's own
# rows (its split draws are seeded by the class, and the settings that shape them are in these
# assets' code versions), so those updates leave the existing partitions alone.
PER_CLASS_IGNORES = {
    name: ("class_catalog", "dataset_splits")
    for name in (
        "class_prompts",
        "augmentation_images",
        "personalized_models",
        "candidate_images",
        "unet_candidate_images",
    )
}

# Upstreams that make their downstream stale only when their rows change (they return a data version
# computed from them): excluded_classes is rewritten whenever any method's images are, and every
# augmented set and classifier reads it, but its rows change only when a class is excluded or let back.
BY_DATA_VERSION = ("excluded_classes",)


def build_stages(profile: Profile) -> SimpleNamespace:
    """Every asset and check of ``profile``, by name."""
    built = SimpleNamespace()
    for build in BUILDERS:
        for name, definition in build(profile, built).items():
            setattr(built, name, definition)
    return built


def _jobs(d: SimpleNamespace) -> list:
    """One job per stage, for launching a stage from the UI (the CLI and the daemon go by automation)."""
    jobs = [
        dg.define_asset_job(
            "prepare_data", selection=[d.class_catalog, d.dataset_splits], description="Class catalog and splits."
        ),
        dg.define_asset_job(
            "build_foundation",
            selection=dg.AssetSelection.groups("foundation") | dg.AssetSelection.assets(d.fidelity_classifier),
            description="The mini world's web pool, CLIP, KNN index and Stable Diffusion (with the fidelity "
            "classifier).",
        ),
    ]
    if hasattr(d, "augmentation_images"):  # a profile with image-making methods
        jobs += [
            dg.define_asset_job(
                "augment_classes",
                selection=[d.class_prompts, d.augmentation_images, d.duplicate_report],
                description="Per class × method: prompts, augmentation images and their duplicate report.",
            ),
            dg.define_asset_job(
                "collect",
                selection=[
                    d.excluded_classes,
                    d.class_fidelity,
                    d.domain_match,
                    d.reference_hashes,
                    d.leak_threshold,
                    d.duplicate_summary,
                ],
                description="Across classes: excluded classes, class fidelity, domain match, reference pHashes, "
                "the leak threshold and the duplicate summary.",
            ),
        ]
    # The personalized stage: one job per partitioning (a job's assets share one partitions definition).
    if hasattr(d, "personalized_models"):
        jobs.append(
            dg.define_asset_job(
                "personalize",
                selection=[d.personalized_models, d.candidate_images],
                description="Per class × method (⑤ ⑥ ⑧): fine-tuning with SD frozen and each checkpoint "
                "candidate's images.",
            )
        )
    if hasattr(d, "personalized_unets"):
        jobs += [
            dg.define_asset_job(
                "personalize_unets",
                selection=[d.personalized_unets],
                description="Per method (⑦ ⑨): the UNet with every class's conditioning or pseudo-word, one run "
                "over all classes.",
            ),
            dg.define_asset_job(
                "unet_candidates",
                selection=[d.unet_candidate_images],
                description="Per class × method (⑦ ⑨): each checkpoint candidate's images.",
            ),
        ]
    if hasattr(d, "checkpoint_selection"):
        jobs.append(
            dg.define_asset_job(
                "select_checkpoints",
                selection=[d.checkpoint_selection],
                description="Per personalized method: one val-scored classifier per checkpoint candidate, the "
                "best one chosen.",
            )
        )
    return jobs + [
        dg.define_asset_job("build_augmented_datasets", selection=[d.augmented_datasets]),
        dg.define_asset_job("train_classifiers", selection=[d.classifier_scores]),
        dg.define_asset_job(
            "report",
            selection=dg.AssetSelection.groups("reports"),
            description="Table 1 beside the paper's, per-class gains, sample grids and reports/report.html.",
        ),
    ]


def condition_for(profile: Profile, key: dg.AssetKey, daemon: bool) -> dg.AutomationCondition:
    """``key``'s automation condition. ``daemon``: new work waits for the profile's cron tick (the
    definitions the UI and the daemon load); the headless command evaluates them without that wait."""
    ignore = [dg.AssetKey(name) for name in PER_CLASS_IGNORES.get(key.to_user_string(), ())]
    spec = profile.automation
    return stale_condition(
        ignore, spec.cron if daemon else None, spec.cron_timezone, [dg.AssetKey(name) for name in BY_DATA_VERSION]
    )


def benchmark_keys(defs: dg.Definitions) -> list[dg.AssetKey]:
    """Every materializable asset of ``defs`` but the calibration-only ones, in the graph's order."""
    graph = defs.resolve_asset_graph()
    return [
        key
        for key in graph.toposorted_asset_keys
        if graph.get(key).is_executable and key.to_user_string() not in CALIBRATION_ONLY
    ]


def build_defs(profile: Profile, daemon: bool = True) -> dg.Definitions:
    """Assets, checks, jobs, sensors and resources of ``profile``. ``daemon=False``: the conditions
    without the cron wait, as the headless command evaluates them."""
    built = build_stages(profile)
    items = list(vars(built).values())
    checks = [item for item in items if isinstance(item, dg.AssetChecksDefinition)]
    assets = [item for item in items if not isinstance(item, dg.AssetChecksDefinition)]
    # The daemon never builds the calibration-only assets (`augassets foundation` does, headless).
    automated = [
        isinstance(a, dg.AssetsDefinition)
        and a.is_executable
        and not (daemon and a.key.to_user_string() in CALIBRATION_ONLY)
        for a in assets
    ]
    assets = [
        with_automation(a, condition_for(profile, a.key, daemon)) if auto else a for a, auto in zip(assets, automated)
    ]
    targets = [
        key
        for a in assets
        if isinstance(a, dg.AssetsDefinition) and a.is_executable
        for key in a.keys
        if key.to_user_string() not in CALIBRATION_ONLY
    ]
    automation_sensors = [
        sensors.scheduled_backfill(profile, targets),
        sensors.new_classes(profile, [built.class_catalog, built.dataset_splits]),
        sensors.damaged_outputs(profile, targets),
    ]
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=_jobs(built),
        sensors=automation_sensors,
        resources=default_resources(profile),
        executor=executors.executor(),  # in the run's process, or Celery workers with AUGASSETS_CELERY_BROKER set
    )
