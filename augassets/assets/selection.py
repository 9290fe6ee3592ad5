"""Stage: which checkpoint each personalized method uses (paper §3.1). Per method, across its classes:
one classifier per candidate label on target ∪ that candidate's images, and the best val accuracy
chooses the label (``checkpoint_selection``; the training loop is ``core.selection``);
``augmentation_images`` then takes the chosen candidate's images, so everything downstream
(duplicates, fidelity, datasets, classifiers) sees one set per method.
"""

from dataclasses import replace
from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.compute import record as record_compute
from ..core.compute import timed
from ..core.markdown import frame_markdown
from ..core.methods import (
    JOINT_FINETUNE_BUILDERS,
    PER_CLASS_FINETUNE_BUILDERS,
)
from ..core.selection import SelectionData, choose, score_candidates
from ..executors import ON_GPU
from ..integrity import outputs
from ..partitions import method_and_class
from ..profiles import Profile
from ..resources import (
    ComputeResource,
    ImageStoreResource,
    WarehouseResource,
)
from ..tags import CHUNK_BY_TAG
from ..versions import code_version
from .finetuning import GROUP, _multi, finetuned_method_keys

SELECTION_SCHEMA = {
    "method": pl.Utf8,
    "candidate": pl.Utf8,
    "val_top1": pl.Float64,
    "best_epoch": pl.Int64,
    "epochs_run": pl.Int64,
    "train_images": pl.Int64,
    "train_seconds": pl.Float64,
    "same_images_as": pl.Utf8,
    "chosen": pl.Boolean,
}


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's asset for ``profile``; ``up``: the earlier stages' definitions by name."""
    keys = finetuned_method_keys(profile)
    if not keys:
        return {}
    candidates = [
        (getattr(up, name), names)
        for name, names in (
            ("candidate_images", finetuned_method_keys(profile, PER_CLASS_FINETUNE_BUILDERS)),
            ("unet_candidate_images", finetuned_method_keys(profile, JOINT_FINETUNE_BUILDERS)),
        )
        if names
    ]
    partitions = _multi(keys)

    @dg.asset(
        metadata=outputs(rows="checkpoint_selection", tables=("checkpoint_scores",)),
        group_name=GROUP,
        code_version=code_version("3", profile.classifier, profile.split.seed, profile.generation.seed),
        **ON_GPU,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        tags={
            CHUNK_BY_TAG: "method"
        },  # its classifiers are per method (every class at once): worker chunks hold whole methods
        deps=[
            *(
                dg.AssetDep(
                    asset,
                    partition_mapping=dg.MultiPartitionMapping(
                        {
                            "method": dg.DimensionPartitionMapping(
                                "method", dg.StaticPartitionMapping({m: m for m in methods})
                            ),
                            "wnid": dg.DimensionPartitionMapping("wnid", dg.AllPartitionMapping()),
                        }
                    ),
                )
                for asset, methods in candidates
            ),
            up.dataset_splits,
        ],
        kinds={"pytorch", "parquet"},
        description="Which checkpoint each personalized method uses (paper §3.1): per method, one classifier "
        "per candidate "
        "label (best val, best train, first epochs) trained on the target plus that candidate's images of every class, "
        "drawn like the method's replicate sets; the label with the highest VALIDATION top-1 is chosen (ties: "
        "the order "
        "listed); only the chosen one's images go on to the test-scored classifiers. Per class × method, the chosen "
        "checkpoint(s); the candidates' val accuracies are the checkpoint_scores table. (Classes retrieval cannot fill "
        "are still in these selection runs: the exclusion is decided downstream of the images.)",
    )
    def checkpoint_selection(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        from ..core.classifier import LabeledImages

        db = warehouse.get()
        classifier_spec = replace(profile.classifier, device=compute.device)
        classes = db.query("SELECT count(*) AS n FROM class_catalog")["n"][0]
        splits = db.query("SELECT * FROM dataset_splits")
        val = splits.filter(pl.col("split") == "val").sort("label", "item")
        image_store.ensure(val["path"], context.log.info)
        val_images = LabeledImages(val["path"].to_list(), val["label"].to_list())
        labels = dict(db.query("SELECT wnid, label FROM class_catalog").iter_rows())
        data = SelectionData(
            splits, val_images, classes, classifier_spec, profile.generation.seed, profile.split.seed * 1000
        )
        scores_all, lines = [], []
        for method in sorted({method_and_class(k)[0] for k in context.partition_keys}, key=keys.index):
            manifest = db.query("SELECT * FROM candidate_manifest WHERE method = ?", [method]).with_columns(
                pl.col("wnid").replace_strict(labels, return_dtype=pl.Int64).alias("label")
            )
            image_store.ensure(manifest["path"].unique(), context.log.info)
            rows, trained = score_candidates(method, manifest, data, context.log.info, context.log.debug)
            record_compute(
                db,
                [
                    timed(
                        "checkpoint_selection",
                        method,
                        "select checkpoint",
                        method,
                        compute.device,
                        sum(r["train_seconds"] for r in trained),
                        sum(r["train_images"] * r["epochs_run"] for r in trained),
                    )
                ],
            )
            best = choose(rows)
            scores = pl.DataFrame([{**r, "chosen": r is best} for r in rows], schema=SELECTION_SCHEMA)
            db.replace("checkpoint_scores", scores, where={"method": method})
            scores_all.append(scores)
            chosen = manifest.filter(pl.col("candidate") == best["candidate"])
            lines.append(
                f"- `{method}`: **{best['candidate']}** (val top-1 {best['val_top1']:.4f} of {len(rows)} candidates)"
            )
            for key in context.partition_keys:
                key_method, wnid = method_and_class(key)
                if key_method != method:
                    continue
                part = chosen.filter(pl.col("wnid") == wnid)
                if part.is_empty():
                    raise ValueError(
                        f"checkpoint_selection[{key}]: candidate {best['candidate']} has no images of class {wnid}: "
                        "rematerialize candidate_images for it"
                    )
                checkpoints = (
                    part.group_by("cluster").agg(pl.col("checkpoint").first(), pl.col("epochs").first()).sort("cluster")
                )
                db.replace(
                    "checkpoint_selection",
                    pl.DataFrame(
                        {
                            "method": [method] * checkpoints.height,
                            "wnid": [wnid] * checkpoints.height,
                            "candidate": [best["candidate"]] * checkpoints.height,
                            "cluster": checkpoints["cluster"],
                            "checkpoint": checkpoints["checkpoint"],
                            "val_top1": [best["val_top1"]] * checkpoints.height,
                        }
                    ),
                    where={"method": method, "wnid": wnid},
                )
        table = pl.concat(scores_all)
        return dg.MaterializeResult(
            metadata={
                "chosen": dg.MetadataValue.md("\n".join(lines)),
                "candidates": dg.MetadataValue.md(frame_markdown(table)),
                "classifiers_trained": int((table["same_images_as"] == table["candidate"]).sum()),
                "train_seconds": float(
                    table.filter(pl.col("same_images_as") == pl.col("candidate"))["train_seconds"].sum()
                ),
            }
        )

    return {"checkpoint_selection": checkpoint_selection}
