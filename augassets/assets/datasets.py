"""Stage: augmented training sets — the target plus each method's extra images, per replicate."""


from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.augment import augmented_sets
from ..core.methods import IMAGES, get_method
from ..core.report import excluded_wnids
from ..partitions import method_partitions
from ..profiles import Profile
from ..resources import WarehouseResource
from ..versions import code_version


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's assets and checks for ``profile``; ``up``: the earlier stages' definitions by name."""

    @dg.asset(
        group_name="datasets",
        code_version=code_version("1", profile.classifier.replicates, profile.generation.seed),
        pool="duckdb",
        deps=[
            up.dataset_splits,
            dg.AssetDep("augmentation_images", partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="method")),
            "excluded_classes",
        ],
        partitions_def=method_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"duckdb"},
        description="For each method, the training set of every classifier replicate: the target images plus the "
        "method's extra images with exactly the target's per-class counts (paper section 3).",
    )
    def augmented_datasets(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        db = warehouse.get()
        splits = db.query("SELECT * FROM dataset_splits")
        excluded = excluded_wnids(db)
        metadata = {"excluded_classes": len(excluded)}
        for key in context.partition_keys:
            method = get_method(key)
            images = None
            if method.extra_images == IMAGES:
                images = db.query("SELECT wnid, label, path, rank FROM augmentation_manifest WHERE method = ?", [key])
            sets = augmented_sets(method, splits, profile.classifier.replicates, images=images, excluded=excluded, seed=profile.generation.seed)
            if sets.is_empty():
                raise RuntimeError(
                    f"augmented_datasets[{key}] is empty: all {len(excluded)} classes are excluded (retrieval could not fill "
                    "them; see the excluded_classes asset) — check the pool index and RetrievalSpec settings"
                )
            db.replace("augmented_datasets", sets, where={"method": key})
            per_set = sets.filter(pl.col("replicate") == 0)
            context.log.info(f"augmented_datasets[{key}]: {profile.classifier.replicates} sets of {per_set.height} images")
            metadata[f"{key}_images_per_set"] = per_set.height
            metadata[f"{key}_extra_images_per_set"] = per_set.filter(pl.col("origin") != "target").height
        return dg.MaterializeResult(metadata={"replicates": profile.classifier.replicates, **metadata})

    return {"augmented_datasets": augmented_datasets}
