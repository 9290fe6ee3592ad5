"""Stage: domain match — per method, how well a linear classifier on CLIP image embeddings tells the
target's images from the method's augmentation images (see ``core/domain.py``). The real extra
subsample, drawn from the target's own distribution, is the reference row: what "the same domain"
reads as."""

import time
from types import SimpleNamespace

import dagster as dg
import numpy as np
import polars as pl

from ..core.compute import record as record_compute
from ..core.compute import timed
from ..core.markdown import frame_markdown
from ..executors import ON_GPU
from ..integrity import outputs
from ..partitions import image_method_keys
from ..profiles import Profile
from ..resources import ClipEncoderResource, ComputeResource, ImageStoreResource, WarehouseResource
from ..versions import code_version

REFERENCE = "real_extra (reference)"
SCHEMA = {"method": pl.Utf8, "images_per_side": pl.Int64, "separability": pl.Float64}


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's asset for ``profile``; ``up``: the earlier stages' definitions by name."""
    if not image_method_keys(profile):
        return {}

    @dg.asset(
        metadata=outputs(tables=("domain_match",)),
        group_name="images",
        code_version=code_version("1", profile.split.seed),
        **ON_GPU,
        deps=[up.augmentation_images, up.dataset_splits, up.clip_model],
        kinds={"pytorch", "parquet"},
        description="Domain match per method, one figure that does not depend on the method: the held-out accuracy "
        "of a linear classifier telling the target domain's images (target and val splits) from the method's "
        "augmentation images by their CLIP image embeddings, per-class balanced, 5-fold (0.5: indistinguishable, "
        "1.0: every image's domain is recognizable). The real extra subsample is the reference row.",
    )
    def domain_match(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        clip_encoder: ClipEncoderResource,
        compute: ComputeResource,  # its setup fixes the thread count the embeddings are computed with
    ) -> dg.MaterializeResult:
        from ..core.clip import encode_image_batches
        from ..core.domain import domain_separability

        started = time.perf_counter()
        db = warehouse.get()
        if profile.world:
            image_store.fetch("models", "clip")
        model, _ = clip_encoder.load()
        size = model.config.vision_config.image_size
        splits = db.query(
            "SELECT split, label, path FROM dataset_splits WHERE split IN ('target', 'val', 'real_extra') ORDER "
            "BY split, label, item"
        )
        manifest = db.query("SELECT method, label, path FROM augmentation_manifest ORDER BY method, wnid, rank")
        image_store.ensure(pl.concat([splits["path"], manifest["path"]]), context.log.info)

        def embed(paths) -> np.ndarray:
            batches = list(encode_image_batches(model, list(paths), size))
            return np.concatenate(batches) if batches else np.zeros((0, model.config.projection_dim), dtype=np.float32)

        domain = splits.filter(pl.col("split").is_in(["target", "val"]))
        domain_x, domain_y = embed(domain["path"]), domain["label"].to_numpy()
        sets = {method: part for (method,), part in manifest.group_by("method", maintain_order=True)}
        extra = splits.filter(pl.col("split") == "real_extra")
        if extra.height:
            sets[REFERENCE] = extra
        rows = []
        for method, part in sets.items():
            separability, n = domain_separability(
                domain_x, domain_y, embed(part["path"]), part["label"].to_numpy(), seed=profile.split.seed
            )
            rows.append({"method": method, "images_per_side": n, "separability": separability})
            context.log.info(f"domain match {method}: separability {separability:.3f} ({n} images per side)")
        table = pl.DataFrame(rows, schema=SCHEMA)
        db.replace("domain_match", table)
        embedded = domain.height + sum(part.height for part in sets.values())
        record_compute(
            db, [timed("domain_match", "", "embed", None, clip_encoder.device, time.perf_counter() - started, embedded)]
        )
        return dg.MaterializeResult(
            metadata={
                "per_method": dg.MetadataValue.md(frame_markdown(table)),
                **{
                    f"separability_{r['method'].split()[0]}": r["separability"]
                    for r in rows
                    if r["separability"] == r["separability"]
                },
                "seconds": round(time.perf_counter() - started, 1),
            }
        )

    return {"domain_match": domain_match}
