"""Stage: the scaling analysis (the paper's Fig. 5B). ``scaling_images`` makes each scaled method's images
per class, enough for the largest ratio (retrieval's nearest images, a prompt method's pool, a
personalized method's pool from its chosen checkpoint); ``scaling_scores`` trains classifiers on the
target plus r × its size of them, for each ratio r of ``ScalingSpec.ratios``, partitioned by method × ratio.

Each partition trains the cell's replicates with the main table's protocol and seeds (replicate r of
every cell starts from the same seed as the main table's replicate r). A class whose images cannot fill
a ratio (retrieval's pool ran out) is named by the cell and, under ``ScalingSpec.short_classes =
"exclude"`` (the paper's), left out of its training and evaluation, the cell's accuracy over every class
bounded by the left-out classes' test images all wrong or all right.
"""

import math
from dataclasses import replace
from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.augment import augmented_sets, training_order
from ..core.compute import Meter
from ..core.compute import record as record_compute
from ..core.knn import KnnError
from ..core.markdown import excluded_wnids, frame_markdown
from ..core.methods import FINETUNE_BUILDERS, PLUGIN, RETRIEVAL, TXT2IMG, get_method
from ..core.plugins import PluginError
from ..executors import ON_GPU
from ..integrity import outputs
from ..partitions import (
    class_partitions,
    image_method_keys,
    method_and_class,
    same_class_of,
    scaling_method_keys,
    scaling_partitions,
)
from ..profiles import Profile
from ..resources import (
    ClipEncoderResource,
    ComputeResource,
    DiffusionBackendResource,
    ImageStoreResource,
    KnnIndexResource,
    WarehouseResource,
)
from ..versions import code_version
from .classifier import labeled_images
from .images import generate_partition_images, plugin_signatures, retrieve_partition
from .partial import fail_partially
from .plugin_images import StepResources, plugin_partition
from .prompts import needed_per_class

SCALING_SCHEMA = {
    "method": pl.Utf8,
    "percent": pl.Utf8,
    "ratio": pl.Float64,
    "replicate": pl.Int64,
    "test_top1": pl.Float64,
    "best_val_top1": pl.Float64,
    "epochs_run": pl.Int64,
    "train_images": pl.Int64,
    "augmentation_images": pl.Int64,
    "wanted_augmentation_images": pl.Int64,
    "short_classes": pl.Utf8,
    "train_seconds": pl.Float64,
    "seed": pl.Int64,
    # ScalingSpec.short_classes = "exclude": the short classes left out of the cell, and its accuracy over every
    # class with their test images counted all wrong (worst) or all right (best); otherwise both are test_top1.
    "excluded_short_classes": pl.Int64,
    "test_top1_worst": pl.Float64,
    "test_top1_best": pl.Float64,
}


def build(profile: Profile, up: SimpleNamespace) -> dict:
    if not hasattr(up, "scaling_images"):
        return {}
    replicates = profile.scaling.replicates or profile.classifier.replicates

    @dg.asset(
        metadata=outputs(rows="scaling_scores"),
        group_name="scaling",
        code_version=code_version(
            "3", profile.classifier, profile.split.seed, replicates, profile.scaling.short_classes
        ),
        **ON_GPU,
        partitions_def=scaling_partitions(profile),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[up.scaling_images, up.dataset_splits, up.excluded_classes],
        kinds={"pytorch", "parquet"},
        description=f"Top-1 test accuracy of {replicates} classifiers per method × ratio, each trained on the "
        "target plus ⌈ratio × the class's target count⌉ of the method's scaling images per class (retrieval: the "
        "most similar first; prompt methods: a seeded sample per replicate), with the main table's protocol and "
        "seeds. Classes that fall short are named in the row; under ScalingSpec.short_classes = exclude (the "
        "paper's) they leave the cell, whose accuracy over every class is bounded by counting their test images "
        "all wrong or all right.",
    )
    def scaling_scores(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        from ..core.classifier import train_classifier

        spec = replace(profile.classifier, device=compute.device)
        db = warehouse.get()
        excluded = excluded_wnids(db)
        classes = db.query("SELECT count(*) AS n FROM class_catalog")["n"][0]
        splits = db.query("SELECT split, wnid, label, path, item FROM dataset_splits").filter(
            ~pl.col("wnid").is_in(list(excluded))
        )
        evaluation = splits.filter(pl.col("split").is_in(["val", "test"])).sort("label", "item")
        image_store.ensure(evaluation["path"], context.log.info)
        val = labeled_images(evaluation.filter(pl.col("split") == "val"))
        test = labeled_images(evaluation.filter(pl.col("split") == "test"))
        counts = splits.filter(pl.col("split") == "target").group_by("wnid").len()
        rows = []
        for key in context.partition_keys:
            method, percent = key.keys_by_dimension["method"], key.keys_by_dimension["percent"]
            ratio = float(percent) / 100
            images = db.query("SELECT wnid, label, path, rank FROM scaling_manifest WHERE method = ?", [method])
            have = images.group_by("wnid").len().rename({"len": "have"})
            short = (
                counts.with_columns((pl.col("len") * ratio).ceil().cast(pl.Int64).alias("want"))
                .join(have, on="wnid", how="left")
                .with_columns(pl.col("have").fill_null(0))
                .filter(pl.col("have") < pl.col("want"))
                .sort("wnid")
            )
            note = ", ".join(f"{r['wnid']} ({r['have']} of {r['want']})" for r in short.iter_rows(named=True))
            leave_out = set(short["wnid"]) if profile.scaling.short_classes == "exclude" else set()
            if note:
                context.log.warning(
                    f"scaling_scores[{key}]: {short.height} classes cannot fill ratio {ratio:g}: {note}"
                    + (" — left out of this cell, its accuracy bounded" if leave_out else "")
                )
            sets = augmented_sets(
                get_method(method),
                splits,
                replicates,
                images=images,
                excluded=excluded | leave_out,
                seed=profile.generation.seed,
                ratio=ratio,
            )
            wanted = int(
                counts.filter(~pl.col("wnid").is_in(list(excluded | leave_out)))
                .select((pl.col("len") * ratio).ceil().cast(pl.Int64).sum())
                .item()
            )
            cell_val, cell_test = val, test
            tested = evaluation.filter(pl.col("split") == "test")
            out = int(tested["wnid"].is_in(list(leave_out)).sum())  # test images of the classes left out
            if leave_out:
                kept = evaluation.filter(~pl.col("wnid").is_in(list(leave_out)))
                cell_val = labeled_images(kept.filter(pl.col("split") == "val"))
                cell_test = labeled_images(kept.filter(pl.col("split") == "test"))
            share = out / tested.height  # the share of test images the bounds decide
            if leave_out and out == tested.height:
                context.log.warning(f"scaling_scores[{key}]: every class is short: nothing to train, bounds 0–1")
                rows.extend(
                    {
                        "method": method,
                        "percent": percent,
                        "ratio": ratio,
                        "replicate": replicate,
                        "wanted_augmentation_images": wanted,
                        "short_classes": note,
                        "excluded_short_classes": len(leave_out),
                        "test_top1_worst": 0.0,
                        "test_top1_best": 1.0,
                        "seed": profile.split.seed * 1000 + replicate,
                    }
                    for replicate in range(replicates)
                )
                db.replace(
                    "scaling_scores",
                    pl.DataFrame(
                        [r for r in rows if r["method"] == method and r["ratio"] == ratio], schema=SCALING_SCHEMA
                    ),
                    where={"method": method, "percent": percent},
                )
                continue
            for replicate in range(replicates):
                train = training_order(sets.filter(pl.col("replicate") == replicate))
                image_store.ensure(train["path"], context.log.info)
                seed = profile.split.seed * 1000 + replicate
                with Meter(
                    "scaling_scores", f"{key}|{replicate}", "train classifier (scaling)", method, spec.device
                ) as meter:
                    result = train_classifier(
                        labeled_images(train),
                        cell_val,
                        cell_test,
                        classes,
                        spec,
                        seed,
                        progress=lambda line, k=key, r=replicate: context.log.debug(f"scaling[{k}, {r}] {line}"),
                    )
                meter.images = result.train_images * result.epochs_run
                record_compute(db, [meter])
                added = int((train["origin"] != "target").sum())
                context.log.info(
                    f"scaling_scores[{method}, {ratio:g}×, {replicate}]: test top-1 {result.test_top1:.4f} with "
                    f"{added} "
                    f"{method} images ({result.train_images} in all)"
                )
                rows.append(
                    {
                        "method": method,
                        "percent": percent,
                        "ratio": ratio,
                        "replicate": replicate,
                        "test_top1": result.test_top1,
                        "best_val_top1": result.best_val_top1,
                        "epochs_run": result.epochs_run,
                        "train_images": result.train_images,
                        "augmentation_images": added,
                        "wanted_augmentation_images": wanted,
                        "short_classes": note or None,
                        "train_seconds": result.train_seconds,
                        "seed": seed,
                        "excluded_short_classes": len(leave_out),
                        "test_top1_worst": result.test_top1 * (1 - share),
                        "test_top1_best": result.test_top1 * (1 - share) + share,
                    }
                )
            cell = pl.DataFrame(
                [r for r in rows if r["method"] == method and r["ratio"] == ratio], schema=SCALING_SCHEMA
            )
            db.replace("scaling_scores", cell, where={"method": method, "percent": percent})
        table = pl.DataFrame(rows, schema=SCALING_SCHEMA)
        return dg.MaterializeResult(
            metadata={
                "classifiers": table.height,
                "mean_test_top1": float(table["test_top1"].mean() or 0.0),
                "short_cells": int(
                    table.filter(pl.col("short_classes").is_not_null())
                    .select(pl.struct("method", "ratio").n_unique())
                    .item()
                ),
                "runs": dg.MetadataValue.md(frame_markdown(table.drop("seed", "short_classes", "percent"))),
            }
        )

    return {"scaling_scores": scaling_scores}


def build_images(profile: Profile, up: SimpleNamespace) -> dict:
    """The scaling analysis's images (before its classifiers, ``build``), for the methods it scales."""
    if not image_method_keys(profile):
        return {}
    scaled = scaling_method_keys(profile)
    if not scaled:
        return {}
    largest_ratio = max(profile.scaling.ratios)
    tuned = [m for m in scaled if get_method(m).builder in FINETUNE_BUILDERS]
    # A personalized method scales from the checkpoint checkpoint_selection chose for the class.
    selection_deps = [dg.AssetDep(up.checkpoint_selection, partition_mapping=same_class_of(tuned))] if tuned else []

    @dg.asset(
        metadata=outputs(paths={"scaling_manifest": "path"}, files=("scaling/{method}/{wnid}/manifest.parquet",)),
        group_name="scaling",
        code_version=code_version(
            "1",
            profile.retrieval,
            profile.generation,
            largest_ratio,
            profile.dataset,
            profile.split,
            *[s for s in plugin_signatures(profile) if s[0] in scaled],  # nothing when no plugin is scaled
        ),
        **ON_GPU,
        partitions_def=dg.MultiPartitionsDefinition(
            {"method": dg.StaticPartitionsDefinition(scaled), "wnid": class_partitions}
        ),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[
            dg.AssetDep(up.class_prompts, partition_mapping=same_class_of(scaled)),
            up.pool_index,
            up.clip_model,
            up.diffusion_model,
            up.dataset_splits,
            *selection_deps,
        ],
        kinds={"faiss", "parquet"},
        description="The scaling analysis's images of a class for a method, enough for its largest ratio: retrieval's "
        "⌈largest ratio × n⌉ nearest images (k grows to 10·1.4·that; a pool that runs out leaves the class short, and "
        "the short cells say so), a prompt method's pool of factor × that, the class's prompts cycled with every "
        "image's own seed; a personalized method's the same, from the checkpoint checkpoint_selection chose; a "
        "plugin's as many as it would make for that need (resampled or not, as it says). Under "
        "scaling/<method>/<wnid>/ with a manifest (table scaling_manifest); the first images coincide with "
        "augmentation_images' where the seeds do.",
    )
    def scaling_images(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        clip_encoder: ClipEncoderResource,
        knn_index: KnnIndexResource,
        diffusion_backend: DiffusionBackendResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        from ..core.generation import GenerationError

        db = warehouse.get()
        labels = dict(db.query("SELECT wnid, label FROM class_catalog").iter_rows())
        builders = {get_method(method_and_class(key)[0]).builder for key in context.partition_keys}
        if profile.world:
            for parts in (("models", "clip"), ("pool_index",), ("web_pool",), ("models", "stable_diffusion")):
                image_store.fetch(*parts)
        retriever = (
            (*clip_encoder.load(), knn_index.get(), diffusion_backend.load_safety_checker())
            if RETRIEVAL in builders
            else None
        )
        pipelines = {TXT2IMG: diffusion_backend.load(TXT2IMG)} if TXT2IMG in builders else {}
        for builder in builders & FINETUNE_BUILDERS:  # its own pipeline: ⑦ ⑨ load their fine-tuned UNet into it
            pipelines[builder] = diffusion_backend.load(TXT2IMG)
        plugin_resources = StepResources(profile, context.log, image_store, clip_encoder, knn_index, diffusion_backend)
        n = math.ceil(largest_ratio * needed_per_class(db, profile))
        generated = math.ceil(profile.generation.factor * n / profile.retrieval.ratio)
        summary, failures = [], {}
        for key in context.partition_keys:
            method, wnid = method_and_class(key)
            retrieving = get_method(method).builder == RETRIEVAL
            needed = generated if get_method(method).resample else n
            try:
                with Meter(
                    "scaling_images",
                    str(key),
                    "retrieve" if retrieving else "generate",
                    method,
                    diffusion_backend.device,
                ) as meter:
                    if retrieving:
                        row, _ = retrieve_partition(
                            profile,
                            context,
                            db,
                            image_store,
                            *retriever,
                            method,
                            wnid,
                            n,
                            labels[wnid],
                            folder="scaling",
                            table="scaling_manifest",
                        )
                    elif get_method(method).builder == PLUGIN:
                        row, _ = plugin_partition(
                            plugin_resources, context, db, method, wnid, needed, "scaling", "scaling_manifest"
                        )
                    else:
                        row, _ = generate_partition_images(
                            profile,
                            context,
                            db,
                            image_store,
                            pipelines[get_method(method).builder],
                            diffusion_backend,
                            method,
                            wnid,
                            labels[wnid],
                            count=generated,
                            folder="scaling",
                            table="scaling_manifest",
                        )
            except (KnnError, GenerationError, PluginError, ValueError, OSError) as error:
                failures[str(key)] = str(error)
                context.log.error(f"scaling_images[{key}] failed: {error}")
                continue
            meter.images = row["images"]
            record_compute(db, [meter])
            summary.append({**row, "needed": needed, "key": str(key)})
        if failures:
            fail_partially(context, {row["key"]: {"images": row["images"]} for row in summary}, failures)
        table = pl.DataFrame(summary, infer_schema_length=None).drop("key")
        return dg.MaterializeResult(
            metadata={
                "partitions": table.height,
                "images": int(table["images"].sum()),
                "largest_ratio": largest_ratio,
                "short_classes": int((table["images"] < table["needed"]).sum()),
                "per_class": dg.MetadataValue.md(frame_markdown(table)),
            }
        )

    return {"scaling_images": scaling_images}
