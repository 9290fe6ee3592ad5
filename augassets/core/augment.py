"""Augmented training sets: the target plus each method's extra images, one set per replicate.

The paper resamples five extra sets with exactly the target's per-class counts and trains one
classifier on target + each set. Baselines and deterministic methods (``real_2p``, retrieval — whose
extra images per class are its most similar survivors) give the same images in every set; their
replicates differ only by the training seed. Excluded classes (retrieval could not fill them) are
left out of every method's sets.
"""

from __future__ import annotations

import polars as pl

from .methods import IMAGES, NO_EXTRA, REAL_EXTRA, Method

AUGMENTED_SCHEMA = {
    "method": pl.Utf8,
    "replicate": pl.Int64,
    "wnid": pl.Utf8,
    "label": pl.Int64,
    "path": pl.Utf8,
    "origin": pl.Utf8,
}


def augmented_sets(
    method: Method,
    splits: pl.DataFrame,
    replicates: int,
    images: pl.DataFrame | None = None,
    excluded: set[str] = frozenset(),
) -> pl.DataFrame:
    """One row per training image of each replicate set: ``origin`` is ``target`` or the method key.

    ``images`` (for methods with their own augmentation images): rows ``wnid, label, path, rank`` —
    the lowest ranks are taken, as many per class as the target has."""
    splits = splits.filter(~pl.col("wnid").is_in(list(excluded)))
    target = splits.filter(pl.col("split") == "target").with_columns(pl.lit("target").alias("origin"))
    if method.extra_images == NO_EXTRA:
        one = target
    elif method.extra_images == REAL_EXTRA:
        extra = splits.filter(pl.col("split") == "real_extra").with_columns(pl.lit(method.key).alias("origin"))
        one = pl.concat([target, extra])
    elif method.extra_images == IMAGES:
        if images is None:
            raise ValueError(f"method {method.key!r} needs its augmentation images")
        counts = target.group_by("wnid").len().rename({"len": "needed"})
        extra = (
            images.filter(~pl.col("wnid").is_in(list(excluded)))
            .join(counts, on="wnid")
            .sort("wnid", "rank")
            .filter(pl.int_range(pl.len()).over("wnid") < pl.col("needed"))
            .with_columns(pl.lit(method.key).alias("origin"))
        )
        one = pl.concat([target.select("wnid", "label", "path", "origin"), extra.select("wnid", "label", "path", "origin")])
    else:
        raise ValueError(f"method {method.key!r} has no image builder yet")
    sets = [
        one.select("wnid", "label", "path", "origin").with_columns(
            pl.lit(method.key).alias("method"), pl.lit(r, dtype=pl.Int64).alias("replicate")
        )
        for r in range(replicates)
    ]
    return pl.concat(sets).select(list(AUGMENTED_SCHEMA))
