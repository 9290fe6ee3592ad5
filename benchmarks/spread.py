"""How steady each row's score is under classifier settings: ``python -m benchmarks.spread``.

Reads a materialized home (``$AUGASSETS_HOME``, profile ``--profile``, after ``augassets benchmark``):
for each ``--methods`` row it retrains the classifier on the row's own augmented sets
(``augmented_datasets``, replicate r with the protocol's seed) under each classifier variant
(``VARIANTS``: overrides of the profile's ``ClassifierSpec``), ``--replicates`` runs per row, and
prints per variant and row: top-1 mean ± s.e., the gain over real_p with its Welch 95 % interval
(``core.analysis``), the runs ended by early stopping, and seconds per classifier; with
``--half-widths``, each gain's interval half-width over the first n replicates, for every n.

A replicate beyond the home's sets is drawn as the protocol draws it: a resampled method's set r
from its generated pool with the draw of replicate r (``core.augment.augmented_sets``; the home's own
sets are checked to be the first of these), a deterministic method's (real_2p, retrieval) the same
images with replicate r's seed.

The variants change how a classifier is trained and chosen, never what it trains on: the figures say
how many replicates, and which settings, resolve a gain of a given size — not which method wins.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import polars as pl

from benchmarks.run import machine

VARIANTS = {
    "protocol": {},
    "lr_0.02": {"lr": 0.02},
    "batch_64": {"batch_size": 64},
    "patience_20_40": {"plateau_patience": 20, "early_stop_patience": 40},
    "steps_20": {"min_steps_per_epoch": 20},
    "steps_20_ema_0.995": {"min_steps_per_epoch": 20, "ema_decay": 0.995},
    "width_16": {"width": 16},
    "ema_0.98": {"ema_decay": 0.98},
    "ema_0.995": {"ema_decay": 0.995},
    "ema_0.98_patience_20_40": {"ema_decay": 0.98, "plateau_patience": 20, "early_stop_patience": 40},
    # The loader's image size (the same crops and flips): mini's protocol is 20 px since fa266b0 (size_20 is then
    # the protocol); size_28 is the protocol before it, the size the images are stored at.
    "size_28": {"image_size": 28},
    "size_24": {"image_size": 24},
    "size_20": {"image_size": 20},
}


def main() -> None:
    import torch

    from augassets.assets.classifier import labeled_images
    from augassets.core.analysis import difference_interval
    from augassets.core.augment import training_order
    from augassets.core.classifier import train_classifier
    from augassets.core.methods import get_method
    from augassets.core.warehouse import Warehouse
    from augassets.profiles import get_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--variants", nargs="+", default=["protocol"], choices=list(VARIANTS))
    parser.add_argument("--methods", nargs="+", default=["real_p", "retrieval", "sariyildiz_prompts"])
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--half-widths", action="store_true", help="each gain's 95 %% half-width over the first n runs")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    torch.set_num_threads(profile.partition_threads or profile.torch_threads or torch.get_num_threads())
    db = Warehouse(profile.tables)
    evaluation = db.query(
        "SELECT split, path, label FROM dataset_splits WHERE split IN ('val', 'test') ORDER BY label, item"
    )
    val, test = (labeled_images(evaluation.filter(pl.col("split") == name)) for name in ("val", "test"))
    classes = db.query("SELECT count(*) AS n FROM class_catalog")["n"][0]
    print(f"# Score spread ({profile.name}, home {profile.home}) on {machine()}\n")
    rows = []
    for variant in args.variants:
        spec = replace(profile.classifier, **VARIANTS[variant])
        for method in args.methods:
            sets = db.query(
                "SELECT replicate, wnid, path, label, origin FROM augmented_datasets WHERE method = ?", [method]
            )
            available = sorted(sets["replicate"].unique())
            if not available:
                raise SystemExit(
                    f"no augmented sets of {method!r} in {profile.home}: run `augassets benchmark` with it first"
                )
            if get_method(method).resample and args.replicates > len(available):
                sets = _more_sets(db, profile, method, args.replicates, sets)
                available = list(range(args.replicates))
            for replicate in range(args.replicates):
                train = labeled_images(
                    training_order(sets.filter(pl.col("replicate") == available[replicate % len(available)]))
                )
                seed = profile.split.seed * 1000 + replicate
                started = time.perf_counter()
                result = train_classifier(train, val, test, classes, spec, seed, progress=lambda line: None)
                rows.append(
                    {
                        "variant": variant,
                        "method": method,
                        "replicate": replicate,
                        "top1": 100 * result.test_top1,
                        "stopped_early": result.stopped_early,
                        "seconds": time.perf_counter() - started,
                    }
                )
                print(
                    f"  {variant} {method} #{replicate}: {100 * result.test_top1:.2f} (best epoch {result.best_epoch}/"
                    f"{result.epochs_run}) {rows[-1]['seconds']:.0f} s",
                    flush=True,
                )
    frame = pl.DataFrame(rows)
    print("\n| variant | method | top-1 ± s.e. | gain vs real_p, 95 % CI (Welch) | early stops | s / classifier |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for variant in args.variants:
        mine = frame.filter(pl.col("variant") == variant)
        base = mine.filter(pl.col("method") == "real_p")["top1"].to_numpy()
        for method in args.methods:
            scores = mine.filter(pl.col("method") == method)
            top1 = scores["top1"].to_numpy()
            se = float(top1.std(ddof=1) / np.sqrt(len(top1))) if len(top1) > 1 else None
            gain = "—"
            if method != "real_p" and len(base) > 1 and se is not None:
                half = difference_interval(se, len(top1), float(base.std(ddof=1) / np.sqrt(len(base))), len(base))
                gain = f"{top1.mean() - base.mean():+.2f} ± {half:.2f}"
            print(
                f"| {variant} | {method} | {top1.mean():.2f} ± {se or float('nan'):.2f} | {gain} | "
                f"{int(scores['stopped_early'].sum())}/{scores.height} | "
                f"{scores['seconds'].mean():.0f} |"
            )
        if args.half_widths:
            print(half_width_table(mine, args.methods, difference_interval))
    print(
        "\nPer run (top-1 %): "
        + "; ".join(f"{r['variant']} {r['method']} #{r['replicate']} {r['top1']:.2f}" for r in rows)
    )


def half_width_table(runs: pl.DataFrame, methods: list[str], difference_interval) -> str:
    """The 95 % half-width of each row's gain over real_p (Welch) when only the first n runs of every
    row count, for n = 2 … all: how many replicates resolve a gain to a given width."""
    n_max = int(runs.group_by("method").len()["len"].min())
    shown = [m for m in methods if m != "real_p"]
    lines = ["\n| runs per row | " + " | ".join(shown) + " |", "| ---: |" + " ---: |" * len(shown)]
    for n in range(2, n_max + 1):
        first = runs.filter(pl.col("replicate") < n)
        base = first.filter(pl.col("method") == "real_p")["top1"].to_numpy()
        cells = []
        for method in shown:
            top1 = first.filter(pl.col("method") == method)["top1"].to_numpy()
            se, base_se = top1.std(ddof=1) / np.sqrt(n), base.std(ddof=1) / np.sqrt(n)
            cells.append(f"{difference_interval(float(se), n, float(base_se), n):.2f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _more_sets(db, profile, method: str, replicates: int, home_sets: pl.DataFrame) -> pl.DataFrame:
    """``replicates`` sets of a resampled method, drawn as ``augmented_datasets`` draws them; the
    home's sets must be the first of them."""
    from augassets.core.augment import augmented_sets
    from augassets.core.methods import get_method

    splits = db.query("SELECT * FROM dataset_splits")
    images = db.query("SELECT wnid, label, path, rank FROM augmentation_manifest WHERE method = ?", [method])
    excluded = set(db.query("SELECT wnid FROM excluded_classes")["wnid"]) if db.has_table("excluded_classes") else set()
    drawn = augmented_sets(
        get_method(method), splits, replicates, images=images, excluded=excluded, seed=profile.generation.seed
    )
    columns = ["replicate", "path", "label", "origin"]
    for r in sorted(home_sets["replicate"].unique()):
        mine = drawn.filter(pl.col("replicate") == r).select(columns).sort("path")
        theirs = home_sets.filter(pl.col("replicate") == r).select(columns).sort("path")
        if not mine.equals(theirs):
            raise SystemExit(f"{method}: replicate {r} drawn here differs from the home's augmented_datasets")
    return drawn


if __name__ == "__main__":
    main()
