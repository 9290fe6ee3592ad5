"""Stage: do augmentation images smuggle test, val or unused training images into training?
pHash (64 bits, Hamming < 10) near-duplicates, as the paper measured them (§4.5); the mini world hashes
with 256 bits (DuplicateSpec.hash_size) and calibrates the threshold on its planted duplicates."""

import time
from types import SimpleNamespace

import dagster as dg
import numpy as np
import polars as pl
from PIL import Image

from ..core.datasets import FashionMnistSource, open_source
from ..core.duplicates import DuplicateIndex, choose_threshold, detector_curve
from ..core.files import file_url_path, save_image_atomic
from ..core.images import image_grid, png_data_uri_markdown
from ..core.markdown import frame_markdown
from ..core.phash import from_hex, phash_files, phash_images, to_hex
from ..core.web_pool import near_duplicate
from ..integrity import outputs
from ..partitions import class_method_partitions, image_method_keys, method_and_class
from ..profiles import Profile
from ..resources import ImageStoreResource, WarehouseResource
from ..versions import code_version

GROUP = "duplicates"
REFERENCE_SPLITS = ("test", "val", "unused_train")
AGREEMENT_SAMPLE = 256
HASH_SCHEMA = {
    "split": pl.Utf8,
    "wnid": pl.Utf8,
    "item": pl.Utf8,
    "path": pl.Utf8,
    "phash": pl.Utf8,
}  # phash: hex, as imagehash prints it
THRESHOLD_SCHEMA = {
    "threshold": pl.Int64,
    "pairs": pl.Int64,
    "recall": pl.Float64,
    "precision": pl.Float64,
    "source": pl.Utf8,
}
PAIR_SCHEMA = {
    "method": pl.Utf8,
    "wnid": pl.Utf8,
    "aug_path": pl.Utf8,
    "ref_split": pl.Utf8,
    "ref_wnid": pl.Utf8,
    "ref_item": pl.Utf8,
    "ref_path": pl.Utf8,
    "distance": pl.Int64,
}


def _unused_train(db, image_store: ImageStoreResource, profile: Profile) -> pl.DataFrame:
    """Training images outside the target and val splits: (wnid, item, path or '', phash). The extra
    real subsample of ``real_2p`` is among them: it is not part of the target that augmentation adds to."""
    used = set(db.query("SELECT item FROM dataset_splits WHERE split IN ('target', 'val')")["item"])
    catalog = db.query("SELECT wnid, folder, source_label FROM class_catalog ORDER BY label")
    source = open_source(profile.dataset, image_store.path("datasets", profile.dataset.class_list))
    rows = []
    for row in catalog.iter_rows(named=True):
        items = [item for item in source.items("train", row["folder"], row["source_label"]) if item not in used]
        if isinstance(source, FashionMnistSource):  # pixels in memory: hash without writing files
            hashes = phash_images((source.image(item) for item in items), profile.duplicates.hash_size)
            rows.append(pl.DataFrame({"wnid": row["wnid"], "item": items, "path": "", "phash": to_hex(hashes)}))
        else:
            hashes, ok = phash_files(items, profile.duplicates.hash_size)
            rows.append(
                pl.DataFrame({"wnid": row["wnid"], "item": items, "path": items, "phash": to_hex(hashes)}).filter(
                    pl.Series(ok)
                )
            )
    return pl.concat(rows).with_columns(pl.lit("unused_train").alias("split"))


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's assets and checks for ``profile``; ``up``: the earlier stages' definitions by name."""
    if not image_method_keys(profile):  # baselines only: no augmentation images to check
        return {}

    spec = profile.duplicates

    @dg.asset(
        metadata=outputs(tables=("reference_hashes",)),
        group_name=GROUP,
        code_version=code_version("4", spec.hash_size, profile.dataset.target),
        deps=[up.dataset_splits],
        kinds={"parquet"},
        description="pHashes (DuplicateSpec.hash_size² bits, stored as hex) of every image augmentation must "
        "not leak: the "
        "test and val splits and the training images no split uses. Hashed once; bit-identical to "
        "imagehash.phash on full decodes.",
    )
    def reference_hashes(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        started = time.perf_counter()
        db = warehouse.get()
        split_rows = db.query("SELECT split, wnid, item, path FROM dataset_splits WHERE split IN ('test', 'val')")
        image_store.ensure(split_rows["path"], context.log.info)
        hashes, ok = phash_files(split_rows["path"].to_list(), spec.hash_size)
        frames = [split_rows.with_columns(pl.Series("phash", to_hex(hashes))).filter(pl.Series(ok))]
        frames.append(_unused_train(db, image_store, profile))
        table = pl.concat([f.select(list(HASH_SCHEMA)).cast(HASH_SCHEMA) for f in frames])
        db.replace("reference_hashes", table)
        counts = dict(table.group_by("split").len().iter_rows())
        agreement = imagehash_agreement(
            split_rows["path"].to_list()[:: max(1, split_rows.height // AGREEMENT_SAMPLE)][:AGREEMENT_SAMPLE]
        )
        context.log.info(
            f"reference hashes ({spec.hash_size**2} bits): {counts}; bit-identical to imagehash.phash on "
            f"{100 * agreement:.1f}% of a sample"
        )
        return dg.MaterializeResult(
            metadata={
                **{f"{k}_images": v for k, v in counts.items()},
                "hash_bits": spec.hash_size**2,
                "undecodable": int((~ok).sum()),
                "imagehash_agreement": agreement,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )

    def imagehash_agreement(paths: list[str]) -> float:
        """Share of ``paths`` whose pHash equals ``imagehash.phash`` bit for bit."""
        import imagehash

        ours, ok = phash_files(paths, spec.hash_size)
        reference = [
            str(imagehash.phash(Image.open(p), hash_size=spec.hash_size)) if good else "" for p, good in zip(paths, ok)
        ]
        return (
            float(np.mean([a == b for a, b, good in zip(to_hex(ours), reference, ok) if good]))
            if ok.any()
            else float("nan")
        )

    @dg.asset(
        metadata=outputs(tables=("leak_threshold",)),
        group_name=GROUP,
        code_version=code_version("2", spec),
        deps=[reference_hashes] + (["web_pool"] if spec.calibrate_on_planted else []),
        kinds={"faiss", "parquet"},
        description="The Hamming threshold below which two pHashes are near-duplicates. Real data: the paper's 10. "
        "The mini world: the strictest threshold that finds DuplicateSpec.target_recall of the known test/val copies "
        "(the pool's planted ones and DuplicateSpec.calibration_copies more kept off the pool), with the detector's "
        "precision–recall curve on that ground truth.",
    )
    def leak_threshold(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        db = warehouse.get()
        if not spec.calibrate_on_planted:
            chosen = {"threshold": spec.hamming_threshold, "pairs": None, "recall": None, "precision": None}
            db.replace("leak_threshold", pl.DataFrame([{**chosen, "source": "paper"}], schema=THRESHOLD_SCHEMA))
            return dg.MaterializeResult(
                metadata={
                    "threshold": spec.hamming_threshold,
                    "source": f"paper (pHash Hamming < {spec.hamming_threshold})",
                }
            )
        # Every pool image, and the off-pool calibration copies, against the test and val hashes: the pool's
        # planted duplicates and the copies are the ground truth; every other pair is a false alarm.
        truth = db.query(
            "SELECT t.pool_id, t.kind, t.source_item, p.url FROM web_pool_truth t JOIN web_pool p USING "
            "(pool_id) ORDER BY pool_id"
        )
        paths = [file_url_path(u) for u in truth["url"]]
        image_store.ensure(paths, context.log.info)
        hashes, ok = phash_files(paths, spec.hash_size)
        copy_items, copies = calibration_copies(db, image_store, set(truth["source_item"]))
        query_ids = truth["pool_id"].to_list() + [-(i + 1) for i in range(len(copy_items))]  # copies: negative ids
        hashes, ok = (
            np.concatenate([hashes, phash_images(copies, spec.hash_size)]),
            np.concatenate([ok, np.ones(len(copies), bool)]),
        )
        references = db.query("SELECT item, phash FROM reference_hashes WHERE split IN ('test', 'val')")
        q, d, dist = DuplicateIndex(from_hex(references["phash"], spec.hash_size)).pairs(
            hashes, spec.max_calibration_threshold
        )
        items = references["item"].to_numpy()
        found = {(query_ids[i], str(items[j]), int(k)) for i, j, k in zip(q, d, dist) if ok[i]}
        planted = {
            (r["pool_id"], r["source_item"])
            for r in truth.filter(pl.col("kind") == "planted_duplicate").iter_rows(named=True)
        }
        planted |= {(-(i + 1), item) for i, item in enumerate(copy_items)}
        curve = pl.DataFrame(detector_curve(found, planted, range(1, spec.max_calibration_threshold + 1)))
        chosen = choose_threshold(curve.to_dicts(), spec.target_recall)
        db.replace("leak_detector_curve", curve)
        db.replace("leak_threshold", pl.DataFrame([{**chosen, "source": "planted"}], schema=THRESHOLD_SCHEMA))
        context.log.info(
            f"leak threshold: Hamming < {chosen['threshold']} finds {chosen['recall']:.3f} of {len(planted)} "
            f"planted duplicates "
            f"at precision {chosen['precision']:.3f} (the paper's < {spec.hamming_threshold}: "
            f"precision {curve.filter(pl.col('threshold') == spec.hamming_threshold)['precision'][0]:.3f})"
        )
        return dg.MaterializeResult(
            metadata={
                "threshold": chosen["threshold"],
                "source": "planted duplicates",
                "planted_duplicates": len(planted),
                "of_which_in_pool": len(planted) - len(copy_items),
                "calibration_copies": len(copy_items),
                "hash_bits": spec.hash_size**2,
                "detector_recall": chosen["recall"],
                "detector_precision": chosen["precision"],
                "detector_pairs_found": chosen["pairs"],
                "paper_threshold_precision": float(
                    curve.filter(pl.col("threshold") == spec.hamming_threshold)["precision"][0]
                ),
                "precision_recall_curve": dg.MetadataValue.md(frame_markdown(curve)),
            }
        )

    def calibration_copies(
        db, image_store: ImageStoreResource, in_pool: set[str]
    ) -> tuple[list[str], list[Image.Image]]:
        """``DuplicateSpec.calibration_copies`` light edits of test and val images (as the pool's planted
        duplicates are made) that are kept out of the pool: ground truth for the detector's curve without
        planting test images into the pool at a rate no web crawl has. Returns (items, images)."""
        pool = profile.world.pool
        rows = db.query(
            "SELECT split, item, path FROM dataset_splits WHERE split IN ('test', 'val') ORDER BY split, item"
        )
        rows = rows.filter(~pl.col("item").is_in(list(in_pool)))
        rng = np.random.default_rng([pool.seed, spec.calibration_copies, 23])
        chosen = rows[np.sort(rng.permutation(rows.height)[: spec.calibration_copies]).tolist()]
        image_store.ensure(chosen["path"])
        images = []
        for path in chosen["path"]:
            with Image.open(path) as image:
                images.append(near_duplicate(image, pool.image_size, rng))
        return chosen["item"].to_list(), images

    @dg.asset_check(
        asset=leak_threshold,
        description="The mini world's detector is meaningful: at the chosen threshold it finds "
        "DuplicateSpec.target_recall "
        "of the planted duplicates with precision ≥ DuplicateSpec.min_precision. Passes trivially on real data "
        "(the paper's threshold).",
    )
    def leak_detector_is_discriminative(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        row = warehouse.get().query("SELECT * FROM leak_threshold").row(0, named=True)
        if row["source"] != "planted":
            return dg.AssetCheckResult(passed=True, metadata={"threshold": row["threshold"], "source": row["source"]})
        return dg.AssetCheckResult(
            passed=row["recall"] >= spec.target_recall and row["precision"] >= spec.min_precision,
            metadata={
                "threshold": row["threshold"],
                "recall": row["recall"],
                "precision": row["precision"],
                "target_recall": spec.target_recall,
                "min_precision": spec.min_precision,
            },
        )

    @dg.asset(
        metadata=outputs(tables=("duplicate_pairs",), rows="duplicate_hashed"),
        group_name=GROUP,
        code_version=code_version("3", spec.hash_size),
        partitions_def=class_method_partitions(profile),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[up.augmentation_images, reference_hashes, leak_threshold],
        kinds={"faiss", "parquet"},
        description="Candidate near-duplicate pairs (pHash Hamming below leak_threshold: the paper's 10 on real "
        "data) between a partition's augmentation images and the test, val and unused training images.",
    )
    def duplicate_report(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        db = warehouse.get()
        references = db.query("SELECT * FROM reference_hashes")
        threshold = int(db.query("SELECT threshold FROM leak_threshold")["threshold"][0])
        index = DuplicateIndex(from_hex(references["phash"], spec.hash_size))
        ref = {column: references[column].to_numpy() for column in ("split", "wnid", "item", "path")}
        totals = {split: 0 for split in REFERENCE_SPLITS}
        images = 0
        for key in context.partition_keys:
            method, wnid = method_and_class(key)
            manifest = db.query(
                "SELECT path FROM augmentation_manifest WHERE method = ? AND wnid = ? ORDER BY rank", [method, wnid]
            )
            image_store.ensure(manifest["path"], context.log.info)
            hashes, ok = phash_files(manifest["path"].to_list(), spec.hash_size)
            images += int(ok.sum())
            q, d, dist = index.pairs(hashes[ok], threshold)
            paths = np.array(manifest["path"].to_list(), dtype=object)[ok]
            pairs = pl.DataFrame(
                {
                    "method": [method] * len(q),
                    "wnid": [wnid] * len(q),
                    "aug_path": paths[q].tolist(),
                    "ref_split": ref["split"][d].tolist(),
                    "ref_wnid": ref["wnid"][d].tolist(),
                    "ref_item": ref["item"][d].tolist(),
                    "ref_path": ref["path"][d].tolist(),
                    "distance": dist,
                },
                schema=PAIR_SCHEMA,
            )
            db.replace("duplicate_pairs", pairs, where={"method": method, "wnid": wnid})
            db.replace(
                "duplicate_hashed",
                pl.DataFrame({"method": [method], "wnid": [wnid], "images": [int(ok.sum())]}),
                where={"method": method, "wnid": wnid},
            )
            for split, n in pairs.group_by("ref_split").len().iter_rows():
                totals[split] += n
        return dg.MaterializeResult(
            metadata={
                "partitions": len(context.partition_keys),
                "augmentation_images": images,
                "hamming_threshold": threshold,
                **{f"pairs_{k}": v for k, v in totals.items()},
            }
        )

    @dg.asset(
        metadata=outputs(tables=("duplicate_summary",)),
        group_name=GROUP,
        code_version=code_version("2"),
        deps=[duplicate_report, leak_threshold],
        kinds={"parquet"},
        description="Leak rates per method and split (augmentation images with a pHash near-duplicate among the test, "
        "val or unused training images), a gallery of candidate pairs, the threshold used and — in the mini world — "
        "the detector's recall and precision on the planted duplicates at that threshold.",
    )
    def duplicate_summary(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        db = warehouse.get()
        pairs = db.query("SELECT * FROM duplicate_pairs")
        hashed = db.query("SELECT method, sum(images) AS images FROM duplicate_hashed GROUP BY method")
        sizes = dict(db.query("SELECT split, count(*) AS n FROM reference_hashes GROUP BY split").iter_rows())
        rows = []
        for method, images in hashed.iter_rows():
            for split in REFERENCE_SPLITS:
                part = pairs.filter((pl.col("method") == method) & (pl.col("ref_split") == split))
                rows.append(
                    {
                        "method": method,
                        "split": split,
                        "augmentation_images": images,
                        "leaking_augmentation_images": part["aug_path"].n_unique(),
                        "matched_reference_images": part["ref_item"].n_unique(),
                        "reference_images": sizes.get(split, 0),
                        "leak_rate": part["aug_path"].n_unique() / images if images else 0.0,
                    }
                )
        summary = pl.DataFrame(rows)
        db.replace("duplicate_summary", summary)
        lines = [
            f"- {r['method']}: {r['matched_reference_images']} of {r['reference_images']:,} {r['split']} images "
            f"have a near-duplicate "
            f"among {r['augmentation_images']:,} augmentation images"
            for r in rows
        ]
        gallery_pairs = pairs.filter(pl.col("ref_path") != "").sort("distance").head(12)
        image_store.ensure([p for r in gallery_pairs.iter_rows(named=True) for p in (r["aug_path"], r["ref_path"])])
        metadata = {
            "pairs": pairs.height,
            "summary": dg.MetadataValue.md(frame_markdown(summary) + "\n\n" + "\n".join(lines)),
        }
        if gallery_pairs.height:
            grid = image_grid([[r["aug_path"], r["ref_path"]] for r in gallery_pairs.iter_rows(named=True)])
            save_image_atomic(grid, image_store.path("reports", "duplicate_gallery.png"))
            image_store.publish("reports", "duplicate_gallery.png")
            metadata["gallery"] = dg.MetadataValue.md(
                "Augmentation image | reference image, closest first:\n\n"
                + png_data_uri_markdown(grid, "duplicate candidates")
            )
        detector = db.query("SELECT * FROM leak_threshold").row(0, named=True)
        metadata["hamming_threshold"] = detector["threshold"]
        metadata["threshold_source"] = detector["source"]
        if detector["source"] == "planted":
            metadata.update(
                {
                    "planted_duplicates": profile.world.pool.planted_test_duplicates
                    + profile.world.pool.planted_val_duplicates,
                    "detector_recall": detector["recall"],
                    "detector_precision": detector["precision"],
                    "detector_pairs_found": detector["pairs"],
                }
            )
            context.log.info(
                f"duplicate detector (Hamming < {detector['threshold']}) on planted duplicates: recall "
                f"{detector['recall']:.3f}, precision {detector['precision']:.3f}"
            )
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset_check(
        asset=duplicate_summary,
        description="The share of augmentation images with a test near-duplicate stays under "
        "DuplicateSpec.max_test_leak_rate.",
    )
    def leak_into_test_split_is_rare(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        summary = warehouse.get().query("SELECT method, leak_rate FROM duplicate_summary WHERE split = 'test'")
        worst = float(summary["leak_rate"].max() or 0.0)
        return dg.AssetCheckResult(
            passed=worst <= profile.duplicates.max_test_leak_rate,
            metadata={
                "worst_test_leak_rate": worst,
                "threshold": profile.duplicates.max_test_leak_rate,
                "per_method": dg.MetadataValue.md(frame_markdown(summary)),
            },
        )

    return {
        "reference_hashes": reference_hashes,
        "leak_threshold": leak_threshold,
        "leak_detector_is_discriminative": leak_detector_is_discriminative,
        "duplicate_report": duplicate_report,
        "duplicate_summary": duplicate_summary,
        "leak_into_test_split_is_rare": leak_into_test_split_is_rare,
    }
