"""``build_defs(profile)``: the study's Dagster definitions — assets (each with the automation condition
``automation.STALE``), checks, jobs and resources — for one profile. Nothing here reads the
environment: the caller passes the profile."""

from __future__ import annotations

from types import SimpleNamespace

import dagster as dg

from .assets import calibration, catalog, classifier, datasets, duplicates, foundation, images, reports, splits
from .automation import with_automation
from .profiles import Profile
from .resources import default_resources

# Data-flow order: each builder may refer to the definitions of the builders before it.
BUILDERS = (
    catalog.build, splits.build, classifier.build_fidelity_classifier, foundation.build, calibration.build, images.build,
    duplicates.build, datasets.build, classifier.build, reports.build,
)


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
        dg.define_asset_job("prepare_data", selection=[d.class_catalog, d.dataset_splits], description="Class catalog and splits."),
        dg.define_asset_job(
            "build_foundation",
            selection=dg.AssetSelection.groups("foundation") | dg.AssetSelection.assets(d.fidelity_classifier),
            description="The mini world's web pool, CLIP, KNN index and Stable Diffusion (with the fidelity classifier).",
        ),
    ]
    if hasattr(d, "augmentation_images"):  # a profile with image-making methods
        jobs += [
            dg.define_asset_job(
                "augment_classes", selection=[d.class_prompts, d.augmentation_images, d.duplicate_report],
                description="Per class × method: prompts, augmentation images and their duplicate report.",
            ),
            dg.define_asset_job(
                "collect", selection=[d.excluded_classes, d.class_fidelity, d.reference_hashes, d.leak_threshold, d.duplicate_summary],
                description="Across classes: excluded classes, class fidelity, reference pHashes, the leak threshold and the duplicate summary.",
            ),
        ]
    return jobs + [
        dg.define_asset_job("build_augmented_datasets", selection=[d.augmented_datasets]),
        dg.define_asset_job("train_classifiers", selection=[d.classifier_scores]),
        dg.define_asset_job("report", selection=[d.results_table]),
    ]


def build_defs(profile: Profile) -> dg.Definitions:
    """Assets, checks, jobs and resources of ``profile``."""
    built = build_stages(profile)
    items = list(vars(built).values())
    checks = [item for item in items if isinstance(item, dg.AssetChecksDefinition)]
    assets = [item for item in items if not isinstance(item, dg.AssetChecksDefinition)]
    assets = [with_automation(a) if isinstance(a, dg.AssetsDefinition) and a.is_executable else a for a in assets]
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=_jobs(built), resources=default_resources(profile))

