"""Stage (mini world): the calibration figures of the world — properties of the pool and the target,
measured by ground truth, never by which method wins (DESIGN §2).

``judge_images`` makes labelled web-domain images exactly like the pool's class images, from training
images no split and no pool row uses, and keeps them out of the pool: CLIP, the index and the UNet
never see them. ``fidelity_judge`` trains the protocol's classifier on them and on their
target-domain originals (with the judge's own patience) and reports its accuracy on both domains: a
part of the world, shipped with it, so it depends on no downstream setting but the classifier's
architecture and training. ``domain_transfer`` measures how far the pool's domain is from the target's
with the target-trained ``fidelity_classifier``. ``domain_oracle`` trains the
protocol's classifiers on the target plus pool images of the right class by ground truth (100 %
augmentation): how much of the real_p → real_2p headroom the pool's domain lets any method close.
"""

import time
from dataclasses import replace
from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.datasets import FashionMnistSource
from ..core.files import atomic_folder, file_url_path, load_checkpoint, save_image_atomic, save_safetensors_atomic
from ..core.images import image_grid, png_data_uri_markdown
from ..core.judge import accuracy_by_class, choose_judge_items, transfer_breakdown, write_judge_images
from ..core.markdown import frame_markdown
from ..executors import ON_GPU
from ..integrity import outputs
from ..profiles import Profile
from ..resources import ComputeResource, ImageStoreResource, WarehouseResource
from ..versions import code_version
from .classifier import labeled_images
from .foundation import defined_lineage, install_shipped

GROUP = "foundation"
JUDGE_CHECKPOINT = "fidelity_judge.safetensors"


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """The mini world's calibration assets (none for an external foundation); ``up``: the earlier stages."""
    if not profile.world:
        return {}
    pool = profile.world.pool

    @dg.asset(
        metadata=outputs(tables=("judge_images",), paths={"judge_images": "path"}),
        group_name=GROUP,
        code_version=code_version("2", pool, profile.dataset.target),
        deps=[up.dataset_splits, up.web_pool],
        kinds={"parquet"},
        description="Labelled web-domain images for the fidelity judge: made like the pool's class images from "
        "training "
        "images that neither the splits nor the pool use, and kept out of the pool (train / val / held-out per class; "
        "train and val also in their target-domain originals).",
    )
    def judge_images(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        started = time.perf_counter()
        db = warehouse.get()
        catalog = db.query("SELECT wnid, label, source_label FROM class_catalog ORDER BY label")
        used = set(db.query("SELECT item FROM dataset_splits")["item"]) | set(
            db.query("SELECT source_item FROM web_pool_truth")["source_item"]
        )
        source = FashionMnistSource(profile.dataset, image_store.path("datasets", profile.dataset.class_list))
        unused = {
            row["wnid"]: [item for item in source.items("train", row["wnid"], row["source_label"]) if item not in used]
            for row in catalog.iter_rows(named=True)
        }
        chosen = choose_judge_items(unused, pool)
        final = image_store.path("judge_images")
        with atomic_folder(final) as tmp:
            table = write_judge_images(
                chosen, dict(zip(catalog["wnid"], catalog["label"])), source.pixels, source.image, pool, tmp, final
            )
        image_store.publish("judge_images")
        db.replace("judge_images", table)
        counts = table.group_by("split", "domain").len().sort("split", "domain")
        web = table.filter(pl.col("split") == "holdout")
        grid = image_grid([web.filter(pl.col("wnid") == w)["path"].head(12).to_list() for w in catalog["wnid"]])
        save_image_atomic(grid, image_store.path("reports", "judge_holdout_grid.png"))
        image_store.publish("reports", "judge_holdout_grid.png")
        return dg.MaterializeResult(
            metadata={
                "images": table.height,
                "per_split_and_domain": dg.MetadataValue.md(frame_markdown(counts)),
                "seconds": round(time.perf_counter() - started, 1),
                "holdout_grid": dg.MetadataValue.md(
                    "Held-out web-domain images, one row per class:\n\n" + png_data_uri_markdown(grid, "judge holdout")
                ),
            }
        )

    judge_spec = profile.judge_classifier
    judge_version = code_version("2", judge_spec, pool)
    judge_deps = [judge_images, up.dataset_splits]
    judge_lineage = defined_lineage("fidelity_judge", judge_version, judge_deps, [*vars(up).values(), judge_images])

    @dg.asset(
        metadata=outputs(tables=("judge_accuracy",), files=(f"models/{JUDGE_CHECKPOINT}",)),
        group_name=GROUP,
        code_version=judge_version,
        **ON_GPU,
        deps=judge_deps,
        kinds={"pytorch", "parquet"},
        description="The unbiased class-fidelity judge: a small ResNet trained on labelled images of both domains "
        "(judge_images), with its accuracy on the real test split and on held-out web-domain images; its spec is the "
        "world's (Profile.judge_classifier: MiniWorldSpec.judge, or the protocol's classifier with judge_patience).",
    )
    def fidelity_judge(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        from ..core.classifier import train_classifier
        from ..core.generation import classify_paths

        spec = replace(judge_spec, device=compute.device)
        db = warehouse.get()
        catalog = db.query("SELECT wnid, label, name FROM class_catalog ORDER BY label")
        images = db.query("SELECT * FROM judge_images ORDER BY split, domain, label, item")
        test = db.query("SELECT path, label FROM dataset_splits WHERE split = 'test' ORDER BY label, item")
        image_store.ensure(pl.concat([images["path"], test["path"]]), context.log.info)
        holdout = images.filter(pl.col("split") == "holdout")
        path = image_store.path("models", JUDGE_CHECKPOINT)
        made = install_shipped(context, profile, "fidelity_judge", judge_lineage, path)
        if made is None:
            result = train_classifier(
                labeled_images(images.filter(pl.col("split") == "train")),
                labeled_images(images.filter(pl.col("split") == "val")),
                labeled_images(holdout),
                catalog.height,
                spec,
                seed=profile.split.seed * 1000 + 777,
                progress=lambda line: context.log.debug(f"fidelity_judge {line}"),
            )
            save_safetensors_atomic(result.state_dict, path)
            made = {
                "source": "trained here",
                "judge_best_epoch": result.best_epoch,
                "judge_stopped_early": result.stopped_early,
                "train_seconds": round(result.train_seconds, 1),
            }
        image_store.publish("models", JUDGE_CHECKPOINT)
        judge_state = load_checkpoint(path, "fidelity_judge")
        # The judge on held-out web-domain images and on the test split.
        judge_holdout = classify_paths({"judge": (judge_state, judge_spec)}, catalog.height, holdout["path"].to_list())[
            "judge"
        ]
        judge_holdout_top1 = float((judge_holdout == holdout["label"].to_numpy()).mean())
        judge_on_test = classify_paths({"judge": (judge_state, judge_spec)}, catalog.height, test["path"].to_list())[
            "judge"
        ]
        judge_test = float((judge_on_test == test["label"].to_numpy()).mean())
        per_class = catalog.with_columns(
            pl.col("label")
            .replace_strict(accuracy_by_class(judge_holdout, holdout["label"]), return_dtype=pl.Float64)
            .alias("holdout_web"),
            pl.col("label")
            .replace_strict(accuracy_by_class(judge_on_test, test["label"]), return_dtype=pl.Float64)
            .alias("test_target"),
        )
        db.replace("judge_accuracy", per_class)
        context.log.info(
            f"fidelity_judge: top-1 {judge_test:.3f} on the test split, {judge_holdout_top1:.3f} on held-out "
            f"web-domain images"
        )
        return dg.MaterializeResult(
            metadata={
                "judge_top1_test": judge_test,
                "judge_top1_holdout_web": judge_holdout_top1,
                "judge_per_class": dg.MetadataValue.md(frame_markdown(per_class)),
                "checkpoint": dg.MetadataValue.path(image_store.url("models", JUDGE_CHECKPOINT)),
                **made,
            }
        )

    @dg.asset(
        metadata=outputs(tables=("domain_transfer",)),
        group_name=GROUP,
        code_version=code_version("1", profile.classifier, pool),
        **ON_GPU,
        deps=[judge_images, up.fidelity_classifier, up.dataset_splits],
        kinds={"pytorch", "parquet"},
        description="The domain transfer ratio: the target-trained fidelity_classifier's accuracy on the "
        "held-out web-domain "
        "images of judge_images ÷ on the test split, overall and per part of the web transform (declared 0.5–0.8).",
    )
    def domain_transfer(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        from ..core.generation import classify_images, classify_paths

        db = warehouse.get()
        classes = db.query("SELECT count(*) AS n FROM class_catalog")["n"][0]
        holdout = db.query("SELECT * FROM judge_images WHERE split = 'holdout' ORDER BY split, domain, label, item")
        test = db.query("SELECT path, label FROM dataset_splits WHERE split = 'test' ORDER BY label, item")
        image_store.ensure(pl.concat([holdout["path"], test["path"]]), context.log.info)
        target_state = load_checkpoint(
            image_store.fetch("models", "fidelity_classifier.safetensors"), "fidelity_classifier"
        )
        on_test = classify_paths({"target": (target_state, profile.classifier)}, classes, test["path"].to_list())[
            "target"
        ]
        target_on_test = float((on_test == test["label"].to_numpy()).mean())
        # The target-trained classifier on the held-out items moved to the web domain, one part of the transform
        # at a time.
        source = FashionMnistSource(profile.dataset, image_store.path("datasets", profile.dataset.class_list))
        breakdown = transfer_breakdown(
            holdout, source.pixels, pool, lambda imgs: classify_images(target_state, profile.classifier, classes, imgs)
        )
        transfer = pl.DataFrame(
            [
                {"web_transform": name, "target_classifier_top1": acc, "transfer_ratio": acc / target_on_test}
                for name, acc in breakdown.items()
            ]
        )
        db.replace("domain_transfer", transfer)
        ratio = breakdown["all"] / target_on_test
        context.log.info(
            f"domain_transfer: ratio {ratio:.3f} (target classifier {breakdown['all']:.3f} on web-domain images, "
            f"{target_on_test:.3f} on test)"
        )
        return dg.MaterializeResult(
            metadata={
                "domain_transfer_ratio": ratio,
                "target_classifier_top1_test": target_on_test,
                "target_classifier_top1_web": breakdown["all"],
                "domain_transfer_by_part": dg.MetadataValue.md(frame_markdown(transfer)),
            }
        )

    @dg.asset(
        metadata=outputs(tables=("domain_oracle",)),
        group_name=GROUP,
        code_version=code_version("1", profile.classifier, profile.split),
        **ON_GPU,
        deps=[up.web_pool, up.dataset_splits],
        kinds={"pytorch", "parquet"},
        description="The oracle row: the protocol's classifiers (one per replicate) trained on the target plus, "
        "per class, as "
        "many pool images of that class by ground truth (web_pool_truth) as the target has — a property of the world: "
        "the most a perfectly precise retrieval of pool-domain images could add. Not part of the results table.",
    )
    def domain_oracle(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        from ..core.classifier import train_classifier

        spec = replace(profile.classifier, device=compute.device)
        db = warehouse.get()
        catalog = db.query("SELECT wnid, label FROM class_catalog ORDER BY label")
        splits = db.query("SELECT split, wnid, label, path FROM dataset_splits ORDER BY label, item")
        pool_images = (
            db.query(
                "SELECT t.wnid, p.url FROM web_pool_truth t JOIN web_pool p USING (pool_id) WHERE t.kind = "
                "'class' AND NOT p.nsfw ORDER BY pool_id"
            )
            .join(catalog, on="wnid")
            .with_columns(pl.col("url").map_elements(file_url_path, return_dtype=pl.Utf8).alias("path"))
        )
        target = splits.filter(pl.col("split") == "target")
        needed = dict(target.group_by("wnid").len().iter_rows())
        image_store.ensure(pl.concat([splits["path"], pool_images["path"]]), context.log.info)
        val, test = (
            labeled_images(splits.filter(pl.col("split") == "val")),
            labeled_images(splits.filter(pl.col("split") == "test")),
        )
        rows = []
        for replicate in range(spec.replicates):
            extra = pool_images.filter(
                pl.int_range(pl.len()).shuffle(seed=profile.split.seed * 1000 + replicate).over("wnid")
                < pl.col("wnid").replace_strict(needed, return_dtype=pl.Int64)
            )
            train = pl.concat([target.select("path", "label"), extra.select("path", "label")])
            result = train_classifier(
                labeled_images(train),
                val,
                test,
                catalog.height,
                spec,
                seed=profile.split.seed * 1000 + replicate,
                progress=lambda line: context.log.debug(f"domain_oracle {line}"),
            )
            context.log.info(
                f"domain_oracle[{replicate}]: test top-1 {result.test_top1:.4f} ({train.height} training images)"
            )
            rows.append(
                {
                    "replicate": replicate,
                    "test_top1": result.test_top1,
                    "best_epoch": result.best_epoch,
                    "epochs_run": result.epochs_run,
                    "stopped_early": result.stopped_early,
                    "train_images": train.height,
                }
            )
        scores = pl.DataFrame(rows)
        db.replace("domain_oracle", scores)
        top1 = scores["test_top1"]
        se = float(top1.std(ddof=1) / len(top1) ** 0.5) if len(top1) > 1 else 0.0  # as the results table's s.e.
        return dg.MaterializeResult(
            metadata={
                "oracle_top1_mean": float(top1.mean()),
                "oracle_top1_se": se,
                "runs": len(rows),
                "runs_table": dg.MetadataValue.md(frame_markdown(scores)),
            }
        )

    return {
        "judge_images": judge_images,
        "fidelity_judge": fidelity_judge,
        "domain_transfer": domain_transfer,
        "domain_oracle": domain_oracle,
    }
