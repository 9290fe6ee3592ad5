"""Stage: the paper's splits — target (p%), val, extra real (for ``real_2p``) and test."""

import time
from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.datasets import make_splits
from ..core.files import save_image_atomic
from ..core.images import image_grid, png_data_uri_markdown
from ..core.markdown import frame_markdown
from ..integrity import outputs
from ..profiles import Profile
from ..resources import ImageStoreResource, WarehouseResource
from ..versions import code_version

GRID_IMAGES_PER_CLASS = 8


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's assets and checks for ``profile``; ``up``: the earlier stages' definitions by name."""

    @dg.asset(
        metadata=outputs(tables=("dataset_splits", "split_skipped_files"), paths={"dataset_splits": "path"}),
        group_name="splits",
        code_version=code_version("1", profile.dataset, profile.split, profile.max_classes),
        deps=[up.class_catalog],
        kinds={"parquet", "python"},
        description="Per class, a seeded draw of the target subsample (p%, class imbalance kept), a disjoint val "
        "subsample of the same size, a disjoint extra real subsample (real_2p) and the test split. Files that "
        "fail to decode are skipped and counted by reason.",
    )
    def dataset_splits(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        db = warehouse.get()
        catalog = db.query("SELECT * FROM class_catalog ORDER BY label")
        started = time.perf_counter()
        splits, report = make_splits(
            catalog,
            profile.dataset,
            profile.split,
            image_store.path("datasets", profile.dataset.class_list),
            context.log.info,
        )
        skipped = pl.DataFrame(report.skipped, schema={"wnid": pl.Utf8, "item": pl.Utf8, "reason": pl.Utf8})
        db.replace("dataset_splits", splits)
        db.replace("split_skipped_files", skipped)

        counts = (
            splits.group_by("wnid", "split")
            .len()
            .pivot(on="split", index="wnid", values="len")
            .fill_null(0)
            .join(catalog.select("wnid", "label", "name"), on="wnid")
            .sort("label")
            .select(
                "wnid",
                "name",
                *(name for name in ("target", "val", "real_extra", "test") if name in splits["split"].unique()),
            )
        )
        grid = image_grid(
            [
                splits.filter((pl.col("split") == "target") & (pl.col("wnid") == wnid))["path"]
                .head(GRID_IMAGES_PER_CLASS)
                .to_list()
                for wnid in catalog["wnid"]
            ]
        )
        grid_path = image_store.path("reports", "dataset_splits_target_grid.png")
        save_image_atomic(grid, grid_path)
        image_store.publish("reports", grid_path.name)
        if image_store.path("datasets", profile.dataset.class_list).exists():  # exported images (Fashion-MNIST)
            image_store.publish("datasets", profile.dataset.class_list)
        totals = splits.group_by("split").len()
        return dg.MaterializeResult(
            metadata={
                **{f"{row['split']}_images": row["len"] for row in totals.iter_rows(named=True)},
                "classes": catalog.height,
                "target_min_per_class": int(counts["target"].min()),
                "target_max_per_class": int(counts["target"].max()),
                "skipped_files": len(report.skipped),
                "skipped_by_reason": report.skipped_by_reason(),
                "converted_non_rgb_files": report.converted,
                "seconds": round(time.perf_counter() - started, 2),
                "per_class_counts": dg.MetadataValue.md(frame_markdown(counts)),
                "target_sample_grid": dg.MetadataValue.md(
                    "One row per class (catalog order), target images:\n\n"
                    + png_data_uri_markdown(grid, "target samples")
                ),
                "target_sample_grid_path": dg.MetadataValue.path(image_store.url("reports", grid_path.name)),
            }
        )

    return {"dataset_splits": dataset_splits}
