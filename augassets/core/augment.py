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


def training_order(train: pl.DataFrame) -> pl.DataFrame:
    """A training set (``label``, ``origin``, ``path`` columns) in the order its classifier reads it:
    by class, the target's images first, then by path within each origin. Images of one origin share
    their folder's prefix, so the order (and the seeded sampler's picks) is the same wherever the home
    or the dataset lies; sorting by path across origins would let the home's path decide."""
    return train.sort(pl.col("label"), pl.col("origin") != "target", pl.col("path"))


def augmented_sets(
    method: Method,
    splits: pl.DataFrame,
    replicates: int,
    images: pl.DataFrame | None = None,
    excluded: set[str] = frozenset(),
    seed: int = 0,
    ratio: float = 1.0,
) -> pl.DataFrame:
    """One row per training image of each replicate set: ``origin`` is ``target`` or the method key.

    ``images`` (for methods with their own augmentation images): rows ``wnid, label, path, rank``. Each
    set takes as many per class as the target has: the lowest ranks (retrieval), or a seeded sample
    drawn anew for every replicate (generated pools, ``method.resample``). ``ratio`` (the scaling
    analysis): ⌈ratio × the class's target count⌉ images per class instead; a class whose images fall
    short contributes what it has."""
    splits = splits.filter(~pl.col("wnid").is_in(list(excluded)))
    target = splits.filter(pl.col("split") == "target")
    if method.extra_images == NO_EXTRA:
        extra_for = lambda r: target.clear()  # noqa: E731
    elif method.extra_images == REAL_EXTRA:
        real_extra = splits.filter(pl.col("split") == "real_extra")
        extra_for = lambda r: real_extra  # noqa: E731
    elif method.extra_images == IMAGES:
        if images is None:
            raise ValueError(f"method {method.key!r} needs its augmentation images")
        needed = (
            target.group_by("wnid").len().select("wnid", (pl.col("len") * ratio).ceil().cast(pl.Int64).alias("needed"))
        )
        pool = images.filter(~pl.col("wnid").is_in(list(excluded))).join(needed, on="wnid").sort("wnid", "rank")

        def extra_for(r: int) -> pl.DataFrame:
            # Retrieval keeps its most similar images; a generated pool is resampled for every replicate.
            order = (
                pl.int_range(pl.len()).shuffle(seed=seed * 1000 + r).over("wnid") if method.resample else pl.col("rank")
            )
            chosen = pool.with_columns(order.alias("_order")).sort("wnid", "_order")
            return chosen.filter(pl.int_range(pl.len()).over("wnid") < pl.col("needed"))
    else:
        raise ValueError(f"method {method.key!r} has no image builder yet")
    sets = []
    for r in range(replicates):
        one = pl.concat(
            [
                target.select("wnid", "label", "path").with_columns(pl.lit("target").alias("origin")),
                extra_for(r).select("wnid", "label", "path").with_columns(pl.lit(method.key).alias("origin")),
            ]
        )
        sets.append(one.with_columns(pl.lit(method.key).alias("method"), pl.lit(r, dtype=pl.Int64).alias("replicate")))
    return pl.concat(sets).select(list(AUGMENTED_SCHEMA))
