"""Stage: augmented training sets — the target plus each method's extra images, per replicate."""

from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.augment import augmented_sets
from ..core.markdown import excluded_wnids
from ..core.methods import IMAGES, get_method
from ..integrity import outputs
from ..lineage import partition_links
from ..partitions import image_method_keys, method_replicate_partitions
from ..profiles import Profile
from ..resources import WarehouseResource
from ..versions import code_version


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's assets and checks for ``profile``; ``up``: the earlier stages' definitions by name."""
    image_methods = image_method_keys(profile)
    # A method's sets read every class partition of that method's images (baselines read none).
    by_method = dg.MultiPartitionMapping(
        {"method": dg.DimensionPartitionMapping("method", dg.StaticPartitionMapping({m: m for m in image_methods}))}
    )
    image_deps = (
        [dg.AssetDep(up.augmentation_images, partition_mapping=by_method), up.excluded_classes] if image_methods else []
    )

    @dg.asset(
        metadata=outputs(rows="augmented_datasets"),
        group_name="datasets",
        code_version=code_version("2", profile.classifier.replicates, profile.generation.seed),
        deps=[up.dataset_splits] + image_deps,
        partitions_def=method_replicate_partitions(profile),
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"parquet"},
        description="Per method and classifier replicate, its training set: the target images plus the method's extra "
        "images with exactly the target's per-class counts (paper section 3).",
    )
    def augmented_datasets(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        db = warehouse.get()
        splits = db.query("SELECT * FROM dataset_splits")
        excluded = excluded_wnids(db)
        metadata = {"excluded_classes": len(excluded)}
        sets_by_method = {}
        for key in context.partition_keys:
            key_method, replicate = key.keys_by_dimension["method"], int(key.keys_by_dimension["replicate"])
            if key_method not in sets_by_method:  # every replicate's set of a method is drawn at once, seeded
                method = get_method(key_method)
                images = None
                if method.extra_images == IMAGES:
                    images = db.query(
                        "SELECT wnid, label, path, rank FROM augmentation_manifest WHERE method = ?", [key_method]
                    )
                sets_by_method[key_method] = augmented_sets(
                    method,
                    splits,
                    profile.classifier.replicates,
                    images=images,
                    excluded=excluded,
                    seed=profile.generation.seed,
                )
            sets = sets_by_method[key_method].filter(pl.col("replicate") == replicate)
            if sets.is_empty():
                raise RuntimeError(
                    f"augmented_datasets[{key}] is empty: all {len(excluded)} classes are excluded (retrieval "
                    f"could not fill "
                    "them; see the excluded_classes asset) — check the pool index and RetrievalSpec settings"
                )
            db.replace("augmented_datasets", sets, where={"method": key_method, "replicate": replicate})
            metadata[f"{key_method}_images_per_set"] = sets.height
            metadata[f"{key_method}_extra_images_per_set"] = sets.filter(pl.col("origin") != "target").height
        sources = []
        for key_method, sets in sets_by_method.items():
            if get_method(key_method).extra_images == IMAGES:
                wnids = sorted(sets.filter(pl.col("origin") != "target")["wnid"].unique())
                sources.append(
                    f"- {key_method}: " + partition_links("augmentation_images", [f"{key_method}|{w}" for w in wnids])
                )
        if sources:
            metadata["drawn_from"] = dg.MetadataValue.md(
                "The class × method image partitions the sets draw from (augmentation_images, "
                "with their sample grids):\n\n" + "\n".join(sources)
            )
        context.log.info(f"augmented_datasets: {len(context.partition_keys)} sets of {len(sets_by_method)} methods")
        return dg.MaterializeResult(metadata={"sets": len(context.partition_keys), **metadata})

    return {"augmented_datasets": augmented_datasets}
