"""Stage: one classifier per (method, replicate), trained with the paper's protocol."""

import time
from dataclasses import replace
from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.augment import training_order
from ..core.compute import Meter
from ..core.compute import record as record_compute
from ..core.files import save_safetensors_atomic
from ..core.markdown import excluded_wnids, frame_markdown
from ..executors import ON_GPU
from ..integrity import outputs
from ..lineage import partition_links
from ..partitions import method_replicate_partitions
from ..profiles import Profile
from ..resources import ComputeResource, ImageStoreResource, WarehouseResource
from ..versions import code_version

SCORE_SCHEMA = {
    "method": pl.Utf8,
    "replicate": pl.Int64,
    "test_top1": pl.Float64,
    "best_val_top1": pl.Float64,
    "best_epoch": pl.Int64,
    "epochs_run": pl.Int64,
    "stopped_early": pl.Boolean,
    "train_images": pl.Int64,
    "train_seconds": pl.Float64,
    "images_per_second": pl.Float64,
    "seed": pl.Int64,
    "checkpoint": pl.Utf8,
}


def labeled_images(frame: pl.DataFrame):
    """A (path, label) frame as the classifier's input (``core.classifier.LabeledImages``)."""
    from ..core.classifier import LabeledImages

    return LabeledImages(paths=frame["path"].to_list(), labels=frame["label"].to_list())


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """The classifier runs of ``profile``; ``up``: the earlier stages' definitions by name."""

    @dg.asset(
        metadata=outputs(
            rows="classifier_scores", files=("models/classifiers/{method}/replicate_{replicate}.safetensors",)
        ),
        group_name="classifier",
        code_version=code_version("2", profile.classifier, profile.split.seed),
        **ON_GPU,
        deps=[up.augmented_datasets],  # the same method × replicate partitions: one set per classifier
        partitions_def=method_replicate_partitions(profile),
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"pytorch", "parquet"},
        description="Top-1 test accuracy (overall and per class) of a ResNet trained on one augmented set: "
        "RandomResizedCrop + flip, SGD, lr ÷10 after a val plateau, early stopping, best-val checkpoint scored "
        "on test. The checkpoint is kept as safetensors.",
    )
    def classifier_scores(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        import torch

        from ..core.classifier import train_classifier, training_machine

        spec = replace(profile.classifier, device=compute.device)
        db = warehouse.get()
        catalog = db.query("SELECT wnid, label, name FROM class_catalog ORDER BY label")
        excluded = list(excluded_wnids(db))
        evaluation = db.query(
            "SELECT split, wnid, path, label FROM dataset_splits WHERE split IN ('val', 'test') ORDER BY label, item"
        )
        evaluation = evaluation.filter(~pl.col("wnid").is_in(excluded))
        image_store.ensure(evaluation["path"], context.log.info)
        val = labeled_images(evaluation.filter(pl.col("split") == "val"))
        test = labeled_images(evaluation.filter(pl.col("split") == "test"))
        rows, started = [], time.perf_counter()
        for key in context.partition_keys:
            method, replicate = key.keys_by_dimension["method"], int(key.keys_by_dimension["replicate"])
            train = training_order(
                db.query(
                    "SELECT path, label, origin FROM augmented_datasets WHERE method = ? AND replicate = ?",
                    [method, replicate],
                )
            )
            if train.is_empty():
                raise RuntimeError(
                    f"no augmented set for method {method!r} replicate {replicate}: materialize "
                    f"augmented_datasets[{key}] first"
                )
            image_store.ensure(train["path"], context.log.info)
            seed = profile.split.seed * 1000 + replicate
            context.log.info(f"classifier[{method}, {replicate}]: {train.height} training images, seed {seed}")
            with Meter("classifier_scores", str(key), "train classifier", method, spec.device) as meter:
                result = train_classifier(
                    labeled_images(train),
                    val,
                    test,
                    catalog.height,
                    spec,
                    seed,
                    progress=lambda line, k=key: context.log.debug(f"classifier[{k}] {line}"),
                )
            meter.images = result.train_images * result.epochs_run
            record_compute(db, [meter])
            checkpoint = image_store.path("models", "classifiers", method, f"replicate_{replicate}.safetensors")
            save_safetensors_atomic(result.state_dict, checkpoint)
            image_store.publish("models", "classifiers", method, checkpoint.name)
            context.log.info(
                f"classifier[{method}, {replicate}]: test top-1 {result.test_top1:.4f} (best val "
                f"{result.best_val_top1:.4f} "
                f"at epoch {result.best_epoch}/{result.epochs_run}, {result.images_per_second:.0f} img/s)"
            )
            row = {
                "method": method,
                "replicate": replicate,
                "test_top1": result.test_top1,
                "best_val_top1": result.best_val_top1,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "train_images": result.train_images,
                "train_seconds": result.train_seconds,
                "images_per_second": result.images_per_second,
                "seed": seed,
                "checkpoint": str(checkpoint),
            }
            scores = pl.DataFrame([row], schema=SCORE_SCHEMA)
            per_class = (
                pl.DataFrame(
                    [{"label": label, "test_top1": acc} for label, acc in result.per_class_test_top1.items()],
                    schema={"label": pl.Int64, "test_top1": pl.Float64},
                )
                .join(catalog, on="label")
                .with_columns(pl.lit(method).alias("method"), pl.lit(replicate, dtype=pl.Int64).alias("replicate"))
            )
            db.replace("classifier_scores", scores, where={"method": method, "replicate": replicate})
            db.replace(
                "per_class_scores",
                per_class.select("method", "replicate", "wnid", "label", "name", "test_top1"),
                where={"method": method, "replicate": replicate},
            )
            rows.append(row)
        summary = pl.DataFrame(rows, schema=SCORE_SCHEMA).drop("checkpoint", "seed")
        return dg.MaterializeResult(
            metadata={
                **training_machine(spec, torch.get_num_threads()),  # the threads the compute resource set
                "runs": len(rows),
                "mean_test_top1": float(summary["test_top1"].mean()),
                "runs_stopped_early": int(summary["stopped_early"].sum()),  # the rest ran into max_epochs
                "mean_images_per_second": float(summary["images_per_second"].mean()),
                "seconds": round(time.perf_counter() - started, 1),
                "runs_table": dg.MetadataValue.md(frame_markdown(summary)),
                "training_sets": dg.MetadataValue.md(
                    "The augmented set each classifier trained on (augmented_datasets):\n\n"
                    + partition_links("augmented_datasets", [str(k) for k in context.partition_keys])
                ),
            }
        )

    return {"classifier_scores": classifier_scores}


def build_fidelity_classifier(profile: Profile, up: SimpleNamespace) -> dict:
    """The target-only classifier the foundation and the fidelity figures use (built before the foundation)."""

    @dg.asset(
        metadata=outputs(files=("models/fidelity_classifier.safetensors",)),
        group_name="classifier",
        code_version=code_version("1", profile.classifier, profile.split.seed),
        **ON_GPU,
        deps=[up.dataset_splits],
        kinds={"pytorch"},
        description="A classifier trained on the real target split alone (the protocol's real_p run, seed 0), "
        "kept to measure target-domain recognizability: the share of augmentation images a classifier that has "
        "only seen the target labels as their class, i.e. how target-like they look (class fidelity itself is "
        "judged by fidelity_judge).",
    )
    def fidelity_classifier(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        import torch

        from ..core.classifier import train_classifier, training_machine

        spec = replace(profile.classifier, device=compute.device)
        db = warehouse.get()
        classes = db.query("SELECT count(*) AS n FROM class_catalog")["n"][0]
        image_store.ensure(db.query("SELECT path FROM dataset_splits")["path"], context.log.info)

        def split(name):
            return labeled_images(
                db.query("SELECT path, label FROM dataset_splits WHERE split = ? ORDER BY label, item", [name])
            )

        result = train_classifier(
            split("target"),
            split("val"),
            split("test"),
            classes,
            spec,
            seed=profile.split.seed * 1000,
            progress=lambda line: context.log.debug(f"fidelity_classifier {line}"),
        )
        path = image_store.path("models", "fidelity_classifier.safetensors")
        save_safetensors_atomic(result.state_dict, path)
        image_store.publish("models", path.name)
        context.log.info(f"fidelity_classifier: test top-1 {result.test_top1:.4f}")
        return dg.MaterializeResult(
            metadata={
                **training_machine(spec, torch.get_num_threads()),  # the threads the compute resource set
                "test_top1": result.test_top1,
                "best_epoch": result.best_epoch,
                "checkpoint": dg.MetadataValue.path(image_store.url("models", path.name)),
            }
        )

    return {"fidelity_classifier": fidelity_classifier}
