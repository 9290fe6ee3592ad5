"""The Dagster definitions of the study: ``dagster dev`` (via workspace.yaml) and the CLI load these."""

from __future__ import annotations

import dagster as dg

from .assets.catalog import class_catalog
from .assets.classifier import classifier_scores, fidelity_classifier
from .assets.datasets import augmented_datasets
from .assets.foundation import foundation_assets
from .assets.reports import results_table
from .assets.splits import dataset_splits
from .resources import default_resources

ASSETS = [class_catalog, dataset_splits, *foundation_assets, fidelity_classifier, augmented_datasets, classifier_scores, results_table]

prepare_job = dg.define_asset_job(
    "prepare_data", selection=[class_catalog, dataset_splits], description="Class catalog and splits."
)
augmented_datasets_job = dg.define_asset_job(
    "build_augmented_datasets", selection=[augmented_datasets]
)
classifier_job = dg.define_asset_job(
    "train_classifiers", selection=[classifier_scores]
)
report_job = dg.define_asset_job("report", selection=[results_table])
foundation_job = dg.define_asset_job(
    "build_foundation",
    selection=dg.AssetSelection.groups("foundation") | dg.AssetSelection.assets(fidelity_classifier),
    description="The mini world's web pool, CLIP, KNN index and Stable Diffusion (with the fidelity classifier).",
)

defs = dg.Definitions(
    assets=ASSETS,
    jobs=[prepare_job, foundation_job, augmented_datasets_job, classifier_job, report_job],
    resources=default_resources(),
)
