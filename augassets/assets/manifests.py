"""The augmentation manifest: one row per image of a class × method partition, the same columns
whatever made the image, and the one way a partition made in a staging folder is recorded."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..core.files import with_file_facts, write_parquet_atomic

MANIFEST_SCHEMA = {
    "method": pl.Utf8,
    "wnid": pl.Utf8,
    "rank": pl.Int64,
    "path": pl.Utf8,
    "prompt": pl.Utf8,
    "family": pl.Utf8,
    "seed": pl.Int64,
    "attempts": pl.Int64,
    "pool_id": pl.Int64,
    "caption": pl.Utf8,
    "similarity": pl.Float64,
    "aesthetic": pl.Float64,
    "candidate": pl.Utf8,
    "checkpoint": pl.Utf8,  # fine-tuned methods: the chosen checkpoint candidate (label) and file(s)
}


def publish_and_record(
    db, image_store, manifest: pl.DataFrame, method: str, wnid: str, label: int, folder: str, table: str
) -> None:
    """Publish the partition's folder (its images and manifest in place) and replace the partition's rows
    of ``table`` with ``manifest`` (with the files' sizes and hashes)."""
    image_store.publish(folder, method, wnid)
    db.replace(
        table,
        with_file_facts(manifest.with_columns(pl.lit(label, dtype=pl.Int64).alias("label"))),
        where={"method": method, "wnid": wnid},
    )


def record_partition(
    db,
    image_store,
    rows: list[dict],
    final: Path,
    method: str,
    wnid: str,
    label: int,
    folder: str = "images",
    table: str = "augmentation_manifest",
) -> pl.DataFrame:
    """Write ``rows`` as the partition's ``manifest.parquet`` into ``final`` (its images already there),
    then ``publish_and_record``."""
    manifest = pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
    write_parquet_atomic(manifest, final / "manifest.parquet")
    publish_and_record(db, image_store, manifest, method, wnid, label, folder, table)
    return manifest
