"""The mini world's calibration figures (DESIGN §2): ``python -m benchmarks.calibration [curve] [table]``.

curve    the learning curve the mini profile's subsample was chosen from: the profile's classifier
         (same recipe, same val and test splits) trained on the target drawn at several fractions p,
         ``--seeds`` runs each; prints top-1 mean ± s.e., how many runs ended by early stopping, and
         the headroom acc(2p) − acc(p) between consecutive points.
designs  the same curve for each candidate target design (``profiles.TARGET_DESIGNS``, plus
         Fashion-MNIST as shipped) at ``--fractions`` (default: the profile's p and 2p): the table
         the mini world's target design is chosen from, by its measured properties only.
draws    the world's own figures over pool draws: for each ``--pool-seeds`` draw, the foundation is
         trained from scratch in its own home under ``$AUGASSETS_HOME`` (``AUGASSETS_POOL_SEED``, about
         an hour each on 2 CPU cores; an existing draw's home is reused), then CLIP zero-shot, the
         simple prompt's relative class fidelity, the judge's accuracies and the domain transfer
         ratio are read from it, with ``--homes`` (homes of draws made before, e.g. the world's own
         training home) beside them: mean and range over the draws.
table  the calibration table of a materialized mini home (``$AUGASSETS_HOME``, after
       ``augassets foundation`` and ``augassets benchmark``; ``--build`` runs both first and
       materializes the oracle): headroom with standard errors, the oracle's gap closure, domain
       transfer by part, CLIP zero-shot, retrieval precision by ground truth, generator fidelity by the
       unbiased judge, the judge's accuracy on both domains, and the leak detector's precision and recall.

Every figure is measured on the world; none is chosen by which method wins.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.run import machine

CURVE_FRACTIONS = (0.002, 0.004, 0.008, 0.016)


def learning_curve(
    profile_name: str, fractions, seeds: int, workdir: Path, design: str | None = "profile"
) -> pl.DataFrame:
    """Classifier runs at each fraction and seed; ``design``: a ``TARGET_DESIGNS`` name, ``None`` for
    Fashion-MNIST as shipped, or ``"profile"`` for the profile's own target."""
    import torch

    from augassets.core.catalog import build_catalog
    from augassets.core.classifier import LabeledImages, train_classifier
    from augassets.core.datasets import make_splits
    from augassets.profiles import TARGET_DESIGNS, get_profile

    profile = get_profile(profile_name)
    if design != "profile":
        profile = replace(profile, dataset=replace(profile.dataset, target=TARGET_DESIGNS[design] if design else None))
    name = profile.dataset.target.name if profile.dataset.target else "fashion_mnist"
    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)
    catalog = build_catalog(profile.dataset, profile.max_classes)
    val_fraction = profile.split.val_fraction or profile.split.train_fraction
    rows = []
    for fraction in fractions:
        # The same val set at every p: the curve moves the target only.
        split = replace(profile.split, train_fraction=fraction, val_fraction=val_fraction, real_extra=False)
        frame, _ = make_splits(catalog, profile.dataset, split, workdir / name / "export", progress=lambda line: None)
        part = lambda name, frame=frame: frame.filter(pl.col("split") == name)  # noqa: E731
        labeled = lambda f: LabeledImages(f["path"].to_list(), f["label"].to_list())  # noqa: E731
        for seed in range(seeds):
            started = time.perf_counter()
            result = train_classifier(
                labeled(part("target")),
                labeled(part("val")),
                labeled(part("test")),
                catalog.height,
                profile.classifier,
                seed=seed,
                progress=lambda line: None,
            )
            rows.append(
                {
                    "design": name,
                    "fraction": fraction,
                    "target_images": part("target").height,
                    "seed": seed,
                    "test_top1": result.test_top1,
                    "best_epoch": result.best_epoch,
                    "epochs_run": result.epochs_run,
                    "stopped_early": result.stopped_early,
                    "seconds": time.perf_counter() - started,
                }
            )
            print(
                f"  {name} p={fraction:g} seed {seed}: {100 * result.test_top1:.2f} % (best epoch "
                f"{result.best_epoch}/{result.epochs_run}, "
                f"{time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    return pl.DataFrame(rows)


def curve_table(runs: pl.DataFrame) -> str:
    summary = (
        runs.group_by("fraction")
        .agg(
            pl.col("target_images").first(),
            (100 * pl.col("test_top1")).mean().alias("top1"),
            (100 * pl.col("test_top1")).std(ddof=1).truediv(pl.len().sqrt()).alias("se"),
            pl.len().alias("runs"),
            pl.col("stopped_early").sum().alias("early"),
            pl.col("epochs_run").mean().alias("epochs"),
            pl.col("seconds").mean().alias("s"),
        )
        .sort("fraction")
    )
    lines = [
        "| p | target images | top-1 (%) mean ± s.e. | runs ended by early stopping | mean epochs | s per run | "
        "headroom to 2p (points) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_fraction = {round(r["fraction"], 6): r for r in summary.iter_rows(named=True)}
    for r in summary.iter_rows(named=True):
        double = by_fraction.get(round(2 * r["fraction"], 6))
        headroom = f"{double['top1'] - r['top1']:+.1f} ± {np.hypot(double['se'], r['se']):.1f}" if double else "—"
        lines.append(
            f"| {r['fraction']:g} | {r['target_images']} | {r['top1']:.2f} ± {r['se']:.2f} | "
            f"{r['early']}/{r['runs']} | "
            f"{r['epochs']:.0f} | {r['s']:.0f} | {headroom} |"
        )
    return "\n".join(lines)


def designs_table(runs: pl.DataFrame) -> str:
    """One row per design: top-1 at p and 2p (mean ± s.e.), the headroom with its s.e., the runs that
    ended by early stopping and the seconds per classifier."""
    lines = [
        "| design | p | top-1 at p (%) | 2p | top-1 at 2p (%) | headroom (points) | ended by early stopping | s "
        "per classifier |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for design in runs["design"].unique(maintain_order=True):
        mine = runs.filter(pl.col("design") == design)
        fractions = sorted(mine["fraction"].unique())
        for p in fractions:
            if round(2 * p, 6) not in {round(f, 6) for f in fractions}:
                continue
            at = {f: 100 * mine.filter((pl.col("fraction") - f).abs() < 1e-9)["test_top1"] for f in (p, 2 * p)}
            both = mine.filter(((pl.col("fraction") - p).abs() < 1e-9) | ((pl.col("fraction") - 2 * p).abs() < 1e-9))
            headroom = at[2 * p].mean() - at[p].mean()
            lines.append(
                f"| {design} | {p:g} | {at[p].mean():.2f} ± {_se(at[p]):.2f} | {2 * p:g} | "
                f"{at[2 * p].mean():.2f} ± {_se(at[2 * p]):.2f} | "
                f"{headroom:+.2f} ± {np.hypot(_se(at[p]), _se(at[2 * p])):.2f} | "
                f"{int(both['stopped_early'].sum())}/{both.height} | "
                f"{both['seconds'].mean():.0f} |"
            )
    return "\n".join(lines)


def _se(values: pl.Series) -> float:
    return float(values.std(ddof=1) / len(values) ** 0.5) if len(values) > 1 else 0.0


def calibration_table(profile_name: str) -> list[tuple[str, str]]:
    """The calibration figures of a materialized home, as (figure, value) rows."""
    import dagster as dg

    from augassets.core.warehouse import Warehouse
    from augassets.profiles import get_profile

    profile = get_profile(profile_name)
    db = Warehouse(profile.tables)
    os.environ.setdefault("DAGSTER_HOME", str(profile.home / "dagster"))
    instance = dg.DagsterInstance.get()
    meta = lambda asset: instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata  # noqa: E731
    rows = []
    scores = db.query("SELECT method, test_top1, stopped_early FROM classifier_scores")
    top1 = {m: 100 * scores.filter(pl.col("method") == m)["test_top1"] for m in scores["method"].unique()}
    for method in ("real_p", "real_2p"):
        rows.append(
            (
                f"{method} top-1 (%)",
                f"{top1[method].mean():.2f} ± {_se(top1[method]):.2f} (s.e., {len(top1[method])} runs)",
            )
        )
    headroom = top1["real_2p"].mean() - top1["real_p"].mean()
    rows.append(("headroom real_2p − real_p (target ≥ 10 points)", f"{headroom:.2f} points"))
    rows.append(
        (
            "classifier runs ended by early stopping (target ≥ 90 %)",
            f"{int(scores['stopped_early'].sum())}/{scores.height} ({100 * scores['stopped_early'].mean():.0f} %)",
        )
    )
    if db.has_table("domain_oracle"):
        oracle = 100 * db.query("SELECT test_top1 FROM domain_oracle")["test_top1"]
        rows.append(
            (
                "oracle (target + right-class pool images by ground truth, 100 %) top-1 (%)",
                f"{oracle.mean():.2f} ± {_se(oracle):.2f}",
            )
        )
        rows.append(
            (
                "oracle's closure of the real_p → real_2p gap (target ≥ 0.5)",
                f"{(oracle.mean() - top1['real_p'].mean()) / headroom:.2f}",
            )
        )
    transfer = meta("domain_transfer")
    rows.append(("domain transfer ratio (declared 0.5–0.8)", f"{transfer['domain_transfer_ratio'].value:.3f}"))
    for row in db.query("SELECT * FROM domain_transfer").iter_rows(named=True):
        rows.append(
            (
                f"  target classifier on held-out items, web transform: {row['web_transform']}",
                f"{row['target_classifier_top1']:.3f} (ratio {row['transfer_ratio']:.3f})",
            )
        )
    clip = meta("clip_model")
    ensemble = clip["zero_shot_top1_ensemble"].value if "zero_shot_top1_ensemble" in clip else float("nan")
    rows.append(
        (
            "CLIP zero-shot top-1 on the test split (target ≥ 0.65): simple prompt / 80 templates ensembled",
            f"{clip['zero_shot_top1'].value:.3f} / {ensemble:.3f}",
        )
    )
    fidelity = db.query("SELECT * FROM class_fidelity")
    retrieval = fidelity.filter(pl.col("method") == "retrieval").sort("wnid")
    if retrieval.height:
        weighted = float((retrieval["ground_truth_precision"] * retrieval["images"]).sum() / retrieval["images"].sum())
        rows.append(
            (
                "retrieval precision by ground truth (no-ws prompt, k = target count)",
                f"{weighted:.3f}; per class "
                + ", ".join(f"{w} {p:.2f}" for w, p in zip(retrieval["wnid"], retrieval["ground_truth_precision"])),
            )
        )
        judged = float((retrieval["fidelity"] * retrieval["images"]).sum() / retrieval["images"].sum())
        rows.append(("judge's class fidelity on retrieved images (must be within 0.1 of the above)", f"{judged:.3f}"))
    sd = meta("diffusion_fidelity")
    rows.append(
        (
            "simple-prompt class fidelity by the judge / judge's held-out pool accuracy (target ≥ 0.6)",
            f"{sd['relative_class_fidelity'].value:.3f} ({sd['class_fidelity'].value:.3f} / "
            f"{sd['judge_top1_holdout_web'].value:.3f})",
        )
    )
    judge = meta("fidelity_judge")
    rows.append(
        (
            "judge top-1: real test split / held-out web-domain images",
            f"{judge['judge_top1_test'].value:.3f} / {judge['judge_top1_holdout_web'].value:.3f}",
        )
    )
    detector = db.query("SELECT * FROM leak_threshold").row(0, named=True)
    rows.append(
        (
            "leak detector: threshold, recall, precision on planted duplicates (target: precision ≥ 0.5 at "
            "recall ≥ 0.95)",
            f"Hamming < {detector['threshold']}: recall {detector['recall']:.3f}, precision "
            f"{detector['precision']:.3f}",
        )
    )
    paper = db.query(f"SELECT * FROM leak_detector_curve WHERE threshold = {profile.duplicates.hamming_threshold}").row(
        0, named=True
    )
    rows.append(
        (
            "  the paper's Hamming < 10 at this resolution",
            f"recall {paper['recall']:.3f}, precision {paper['precision']:.3f}",
        )
    )
    return rows


DRAW_FIGURES = (  # (asset, metadata key, label)
    ("clip_model", "zero_shot_top1", "CLIP zero-shot top-1 on the test split, simple prompt (target ≥ 0.65)"),
    ("clip_model", "zero_shot_top1_ensemble", "CLIP zero-shot top-1, CLIP's 80 templates ensembled"),
    ("diffusion_fidelity", "relative_class_fidelity", "simple-prompt relative class fidelity (target ≥ 0.6)"),
    ("diffusion_fidelity", "class_fidelity", "simple-prompt class fidelity by the judge"),
    ("fidelity_judge", "judge_top1_holdout_web", "judge top-1 on held-out web-domain images"),
    ("domain_transfer", "domain_transfer_ratio", "domain transfer ratio (declared 0.5–0.8)"),
)
MEASURED_BEFORE_BY = {"domain_transfer": "fidelity_judge"}  # where a home made before the split recorded the figure


def draw_figures(profile_name: str, home: Path) -> dict[str, float]:
    """The world's figures of one trained draw: the latest materializations in ``home``'s instance."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home / profile_name / "dagster")
    instance = dg.DagsterInstance.get()
    figures = {}
    for asset, key, _ in DRAW_FIGURES:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None and asset in MEASURED_BEFORE_BY:
            event = instance.get_latest_materialization_event(dg.AssetKey(MEASURED_BEFORE_BY[asset]))
        if event is None:
            raise SystemExit(f"{home}: no {asset}; train the draw's foundation first")
        metadata = event.asset_materialization.metadata  # a figure this home's code did not measure yet: NaN
        figures[f"{asset}.{key}"] = float(metadata[key].value) if key in metadata else float("nan")
    return figures


def draws_table(profile_name: str, seeds: list[int], homes: list[str]) -> str:
    base = Path(os.environ.get("AUGASSETS_HOME", "augassets_home")).resolve()
    cli = str(Path(sys.executable).with_name("augassets"))
    columns = {}
    for home in homes:
        columns[f"{Path(home).name}"] = draw_figures(profile_name, Path(home))
    for seed in seeds:
        home = base / f"pool_draw_{seed}"
        env = {
            **os.environ,
            "AUGASSETS_PROFILE": profile_name,
            "AUGASSETS_HOME": str(home),
            "AUGASSETS_POOL_SEED": str(seed),
            "AUGASSETS_WORLD": "train",
        }
        env.pop("DAGSTER_HOME", None)
        started = time.perf_counter()
        subprocess.run([cli, "foundation"], env=env, check=True)
        print(f"  pool draw {seed}: foundation in {time.perf_counter() - started:.0f} s ({home})", flush=True)
        columns[f"draw {seed}"] = draw_figures(profile_name, home)
    names = list(columns)
    lines = ["| figure | " + " | ".join(names) + " | mean (range) |", "| --- |" + " ---: |" * (len(names) + 1)]
    for asset, key, label in DRAW_FIGURES:
        values = [columns[name][f"{asset}.{key}"] for name in names]
        known = [v for v in values if v == v]
        summary = f"{np.mean(known):.3f} ({min(known):.3f}–{max(known):.3f})" if known else "—"
        lines.append(f"| {label} | " + " | ".join("—" if v != v else f"{v:.3f}" for v in values) + f" | {summary} |")
    return "\n".join(lines)


def build(profile_name: str) -> None:
    """Materialize the foundation (with the calibration assets) and the main command on the home."""
    env = {**os.environ, "AUGASSETS_PROFILE": profile_name}
    cli = str(Path(sys.executable).with_name("augassets"))
    subprocess.run([cli, "foundation"], env=env, check=True)
    subprocess.run([cli, "benchmark"], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["curve", "table"], choices=["curve", "designs", "draws", "table"])
    parser.add_argument(
        "--pool-seeds", type=int, nargs="*", default=[1], help="draws: pool draws to train (0 is the shipped world's)"
    )
    parser.add_argument(
        "--homes", nargs="*", default=[], help="draws: homes of draws trained before (AUGASSETS_HOME folders)"
    )
    parser.add_argument(
        "--designs",
        nargs="+",
        default=None,
        help="candidate designs (default: every TARGET_DESIGNS entry and fashion_mnist)",
    )
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=None,
        help=f"curve default {CURVE_FRACTIONS}; designs: the profile's p and 2p",
    )
    parser.add_argument("--build", action="store_true", help="materialize the foundation and the main command first")
    args = parser.parse_args()
    print(f"# Calibration ({args.profile}) on {machine()}\n")
    if "curve" in args.parts:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="augassets-curve-") as tmp:
            runs = learning_curve(args.profile, args.fractions or CURVE_FRACTIONS, args.seeds, Path(tmp))
        print("\n## Learning curve\n\n" + curve_table(runs) + "\n")
    if "designs" in args.parts:
        import tempfile

        from augassets.profiles import TARGET_DESIGNS, get_profile

        p = get_profile(args.profile).split.train_fraction
        names = args.designs or ["fashion_mnist", *TARGET_DESIGNS]
        with tempfile.TemporaryDirectory(prefix="augassets-designs-") as tmp:
            runs = pl.concat(
                [
                    learning_curve(
                        args.profile,
                        args.fractions or (p, 2 * p),
                        args.seeds,
                        Path(tmp),
                        None if name == "fashion_mnist" else name,
                    )
                    for name in names
                ]
            )
        print("\n## Target designs\n\n" + designs_table(runs) + "\n")
    if "draws" in args.parts:
        print(
            "\n## The world over pool draws\n\n" + draws_table(args.profile, args.pool_seeds, args.homes) + "\n",
            flush=True,
        )
    if "table" in args.parts:
        if args.build:
            build(args.profile)
        print("## Calibration table\n\n| figure | value |\n| --- | --- |")
        for figure, value in calibration_table(args.profile):
            print(f"| {figure} | {value} |")


if __name__ == "__main__":
    main()
