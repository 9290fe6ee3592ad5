"""The Dagster definitions of the study: ``dagster dev`` (via workspace.yaml) and the CLI load these."""

import dagster as dg

from .assets.catalog import class_catalog
from .assets.classifier import classifier_scores, fidelity_classifier
from .assets.datasets import augmented_datasets
from .assets.duplicates import (
    duplicate_report, duplicate_summary, leak_detector_is_discriminative, leak_threshold, reference_hashes, test_leak_rate_is_low,
)
from .assets.foundation import foundation_assets
from .assets.calibration import calibration_assets
from .assets.images import (
    augmentation_images, augmentation_images_are_valid, class_fidelity, class_prompts, excluded_classes, judge_agrees_with_ground_truth,
)
from .assets.reports import results_table
from .assets.splits import dataset_splits
from .resources import default_resources

ASSETS = [
    class_catalog, dataset_splits, *foundation_assets, fidelity_classifier, *calibration_assets,
    class_prompts, augmentation_images, excluded_classes, class_fidelity,
    augmented_datasets, classifier_scores, results_table,
    reference_hashes, leak_threshold, duplicate_report, duplicate_summary,
]
CHECKS = [augmentation_images_are_valid, judge_agrees_with_ground_truth, leak_detector_is_discriminative, test_leak_rate_is_low]

JOBS = [
    dg.define_asset_job("prepare_data", selection=[class_catalog, dataset_splits], description="Class catalog and splits."),
    dg.define_asset_job(
        "build_foundation",
        selection=dg.AssetSelection.groups("foundation") | dg.AssetSelection.assets(fidelity_classifier),
        description="The mini world's web pool, CLIP, KNN index and Stable Diffusion (with the fidelity classifier).",
    ),
    dg.define_asset_job(
        "augment_classes", selection=[class_prompts, augmentation_images, duplicate_report],
        description="Per class × method: prompts, augmentation images and their duplicate report.",
    ),
    dg.define_asset_job(
        "collect", selection=[excluded_classes, class_fidelity, reference_hashes, leak_threshold, duplicate_summary],
        description="Across classes: excluded classes, class fidelity, reference pHashes, the leak threshold and the duplicate summary.",
    ),
    dg.define_asset_job("build_augmented_datasets", selection=[augmented_datasets]),
    dg.define_asset_job("train_classifiers", selection=[classifier_scores]),
    dg.define_asset_job("report", selection=[results_table]),
]

defs = dg.Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=JOBS, resources=default_resources())
