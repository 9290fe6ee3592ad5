"""How steady each row's score is under classifier settings: ``python -m benchmarks.spread``.

Reads a materialized home (``$AUGASSETS_HOME``, profile ``--profile``, after ``augassets benchmark``):
for each ``--methods`` row it retrains the classifier on the row's own augmented sets
(``augmented_datasets``, replicate r with the protocol's seed) under each classifier variant
(``VARIANTS``: overrides of the profile's ``ClassifierSpec``), ``--replicates`` runs per row (a
replicate beyond the home's sets reuses set r mod n with its own seed), and prints per variant and
row: top-1 mean ± s.e., the gain over real_p with its Welch 95 % interval (``core.analysis``), the runs
ended by early stopping, and seconds per classifier.

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
}


def main() -> None:
    import torch

    from augassets.assets.classifier import labeled_images
    from augassets.core.analysis import difference_interval
    from augassets.core.augment import training_order
    from augassets.core.classifier import train_classifier
    from augassets.core.warehouse import Warehouse
    from augassets.profiles import get_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--variants", nargs="+", default=["protocol"], choices=list(VARIANTS))
    parser.add_argument("--methods", nargs="+", default=["real_p", "retrieval", "sariyildiz_prompts"])
    parser.add_argument("--replicates", type=int, default=5)
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
            sets = db.query("SELECT replicate, path, label, origin FROM augmented_datasets WHERE method = ?", [method])
            available = sorted(sets["replicate"].unique())
            if not available:
                raise SystemExit(
                    f"no augmented sets of {method!r} in {profile.home}: run `augassets benchmark` with it first"
                )
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


if __name__ == "__main__":
    main()
