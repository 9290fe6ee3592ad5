"""Stage: class fidelity — the share of each method's augmentation images the unbiased judge labels as
their class — and target-domain recognizability, per method and class, with a check of the judge
against retrieval's ground-truth precision in the mini world (the paper's domain-gap argument)."""

import time
from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.compute import record as record_compute
from ..core.compute import timed
from ..core.files import load_checkpoint
from ..core.markdown import frame_markdown
from ..core.methods import RETRIEVAL, keys_with_builder
from ..executors import ON_GPU
from ..integrity import outputs
from ..partitions import (
    image_method_keys,
)
from ..profiles import Profile
from ..resources import (
    ComputeResource,
    ImageStoreResource,
    WarehouseResource,
)
from ..versions import code_version

GROUP = "images"
JUDGE_TOLERANCE = 0.1  # the judge's fidelity on retrieved images may differ this much from their ground-truth precision


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's asset and check for ``profile``; ``up``: the earlier stages' definitions by name."""
    if not image_method_keys(profile):  # baselines only: no images to judge
        return {}
    retrieval_methods = keys_with_builder(RETRIEVAL, profile.methods)

    @dg.asset(
        metadata=outputs(tables=("class_fidelity",)),
        group_name=GROUP,
        code_version=code_version("2"),
        **ON_GPU,
        deps=[up.augmentation_images, up.fidelity_classifier] + ([up.fidelity_judge] if profile.world else []),
        kinds={"pytorch", "parquet"},
        description="Per method and class: class fidelity — the share of a method's augmentation images the "
        "unbiased judge "
        "(trained on labelled images of both domains) labels as the class they were made for — and target-domain "
        "recognizability — the share the classifier trained on the real target alone recognizes, i.e. how target-like "
        "they look (the paper's domain-gap argument). For retrieval in the mini world, also its precision by "
        "ground truth "
        "(web_pool_truth), against which the judge is checked.",
    )
    def class_fidelity(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:  # compute: its setup fixes the thread count the judges run with
        from ..core.generation import classify_paths

        db = warehouse.get()
        catalog = db.query("SELECT label, wnid, name FROM class_catalog ORDER BY label")
        judges = {
            "target_recognizability": (
                load_checkpoint(image_store.fetch("models", "fidelity_classifier.safetensors"), "fidelity_classifier"),
                profile.classifier,
            )
        }
        if profile.world:
            judges["fidelity"] = (
                load_checkpoint(image_store.fetch("models", "fidelity_judge.safetensors"), "fidelity_judge"),
                profile.judge_classifier,
            )
        manifest = db.query(
            "SELECT method, wnid, label, path, pool_id FROM augmentation_manifest ORDER BY method, wnid, rank"
        )
        image_store.ensure(manifest["path"], context.log.info)
        judging = time.perf_counter()
        predictions = classify_paths(judges, catalog.height, manifest["path"].to_list())
        scored = manifest.with_columns(
            pl.Series(f"by_{name}", values, dtype=pl.Int64) for name, values in predictions.items()
        )
        if profile.world:  # retrieved pool images have a ground truth
            truth = db.query("SELECT pool_id, kind, wnid AS true_wnid FROM web_pool_truth")
            scored = scored.join(truth, on="pool_id", how="left").with_columns(
                pl.when(pl.col("pool_id").is_null())
                .then(None)
                .otherwise((pl.col("kind") != "distractor") & (pl.col("true_wnid") == pl.col("wnid")))
                .alias("truly_of_class")
            )
        figures = [(pl.col(f"by_{name}") == pl.col("label")).mean().alias(name) for name in judges]
        if "truly_of_class" in scored.columns:
            figures.append(pl.col("truly_of_class").mean().alias("ground_truth_precision"))
        per_class = scored.group_by("method", "wnid").agg(*figures, pl.len().alias("images")).sort("method", "wnid")
        per_method = scored.group_by("method").agg(*figures, pl.len().alias("images")).sort("method")
        db.replace("class_fidelity", per_class)
        record_compute(
            db,
            [
                timed(
                    "class_fidelity",
                    "",
                    "judge",
                    None,
                    profile.classifier.device,
                    time.perf_counter() - judging,
                    manifest.height,
                )
            ],
        )
        for row in per_method.iter_rows(named=True):
            context.log.info(
                f"class fidelity {row['method']}: "
                + ", ".join(
                    f"{k} {row[k]:.3f}"
                    for k in per_method.columns
                    if k not in ("method", "images") and row[k] is not None
                )
                + f" over {row['images']} images"
            )
        metadata = {
            "per_method": dg.MetadataValue.md(frame_markdown(per_method)),
            "per_class": dg.MetadataValue.md(frame_markdown(per_class)),
            **{f"{name}_{r['method']}": r[name] for r in per_method.iter_rows(named=True) for name in judges},
        }
        if "ground_truth_precision" in per_method.columns:
            for row in per_method.filter(pl.col("method").is_in(retrieval_methods)).iter_rows(named=True):
                metadata[f"{row['method']}_ground_truth_precision"] = row["ground_truth_precision"]
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset_check(
        asset=class_fidelity,
        description="The judge is unbiased where the truth is known: on retrieved pool images its class "
        "fidelity is within "
        f"{JUDGE_TOLERANCE} of retrieval's precision by ground truth (mini world; passes trivially where there "
        f"is no ground truth).",
    )
    def judge_agrees_with_ground_truth(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        db = warehouse.get()
        table = db.query("SELECT * FROM class_fidelity").filter(pl.col("method").is_in(retrieval_methods))
        if "ground_truth_precision" not in table.columns or table.is_empty():
            return dg.AssetCheckResult(
                passed=True, metadata={"compared": "nothing: no retrieval images with ground truth"}
            )
        judged = float((table["fidelity"] * table["images"]).sum() / table["images"].sum())
        truth = float((table["ground_truth_precision"] * table["images"]).sum() / table["images"].sum())
        return dg.AssetCheckResult(
            passed=abs(judged - truth) <= JUDGE_TOLERANCE,
            metadata={"judge_fidelity": judged, "ground_truth_precision": truth, "difference": judged - truth},
        )

    return {"class_fidelity": class_fidelity, "judge_agrees_with_ground_truth": judge_agrees_with_ground_truth}
