"""Figures for asset metadata and reports, drawn with matplotlib's headless Agg backend.

Each function returns a PIL image (the caller embeds it in metadata or saves it); a figure that fails
to draw raises, and callers that treat figures as extras catch and log it.
"""

from __future__ import annotations

import io
import textwrap

import polars as pl
from PIL import Image


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _to_image(plt, figure) -> Image.Image:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def loss_curves(history: pl.DataFrame, title: str) -> Image.Image:
    """Train (dashed) and val (solid) loss per epoch, one colour per run; ``history`` has columns
    ``run`` (a label), ``epoch``, ``train_loss`` and ``val_loss``."""
    plt, figure = _figure(6.4, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, (run, part) in enumerate(history.sort("run", "epoch").group_by("run", maintain_order=True)):
        colour = colours[number % len(colours)]
        axes.plot(part["epoch"], part["val_loss"], "-", color=colour, label=str(run[0]))
        axes.plot(part["epoch"], part["train_loss"], "--", color=colour, alpha=0.6)
    axes.set_xlabel("epoch")
    axes.set_ylabel("SD loss (solid: val, dashed: train)")
    axes.set_title(title)
    if history["run"].n_unique() <= 12:
        axes.legend(fontsize=7, ncols=2)
    return _to_image(plt, figure)


def table1_figure(summary: pl.DataFrame, paper_dataset: str) -> Image.Image:
    """Table 1 as bars. Left: our top-1 per method with its 95 % interval (the baselines shaded).
    Right: the gain over real_p in percentage points, ours (with its 95 % interval) beside the
    paper's — the comparable quantity, since the paper's dataset is not ours."""
    plt, figure = _figure(11, 0.45 * summary.height + 1.6)
    left, right = figure.subplots(1, 2, sharey=True)
    labels = summary["method"].to_list()
    y = list(range(len(labels)))
    means = [100 * v for v in summary["top1_mean"].to_list()]
    errors = [0 if v is None else 100 * v for v in summary["top1_ci95"].to_list()]
    colours = ["#999999" if m in ("real_p", "real_2p") else "#4878a8" for m in labels]
    left.barh(y, means, xerr=errors, color=colours, capsize=3)
    low = min(means) - max(errors + [0]) - 2
    left.set_xlim(max(0, low), max(m + e for m, e in zip(means, errors)) + 1)
    left.set_yticks(y, labels)
    left.invert_yaxis()
    left.set_xlabel("top-1 (%), ours, 95 % CI")
    gains = [None if v is None else 100 * v for v in summary["gain"].to_list()]
    gain_errors = [0 if v is None else 100 * v for v in summary["gain_ci95"].to_list()]
    paper = [None if v is None else 100 * v for v in summary["paper_gain"].to_list()]
    height = 0.38
    right.barh(
        [i - height / 2 for i in y],
        [g or 0 for g in gains],
        height,
        xerr=gain_errors,
        color="#4878a8",
        capsize=2,
        label="ours",
    )
    right.barh(
        [i + height / 2 for i in y], [p or 0 for p in paper], height, color="#e0a040", label=f"paper ({paper_dataset})"
    )
    for i, (g, p) in enumerate(zip(gains, paper)):
        if p is None:
            right.text(0, i + height / 2, " not reported", va="center", fontsize=7, color="#a06000")
        if g is None:
            right.text(0, i - height / 2, " no baseline", va="center", fontsize=7)
    right.axvline(0, color="black", linewidth=0.8)
    right.set_xlabel("gain over real_p (percentage points)")
    right.legend(fontsize=8, loc="lower right")
    figure.suptitle("Table 1: top-1 per augmentation method, and its gain beside the paper's", fontsize=10)
    figure.tight_layout()
    return _to_image(plt, figure)


def per_class_gain_figure(gains: pl.DataFrame) -> Image.Image:
    """Per-class gain over real_p (the paper's Fig. 5A), one line per method: each method's classes
    sorted from its worst to its best gain, so the curves show how many classes gain and by how much."""
    plt, figure = _figure(7.5, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, method in enumerate(gains["method"].unique(maintain_order=True)):
        values = sorted(100 * v for v in gains.filter(pl.col("method") == method)["gain"].to_list())
        style = "-" if method in ("retrieval", "real_2p") else "--"
        width = 2.2 if method == "retrieval" else 1.2
        axes.plot(
            range(1, len(values) + 1),
            values,
            style,
            color=colours[number % len(colours)],
            linewidth=width,
            marker=".",
            label=method,
        )
    axes.axhline(0, color="black", linewidth=0.8)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel("classes, sorted by gain (per method)")
    axes.set_ylabel("per-class test accuracy gain over real_p (pp)")
    axes.set_title("Per-class gains (paper Fig. 5A)")
    if gains.height:
        axes.legend(fontsize=7, ncols=2)
    else:
        axes.text(0.5, 0.5, "no per-class gains: real_p has not run", transform=axes.transAxes, ha="center")
    return _to_image(plt, figure)


def gain_distribution_figure(gains: pl.DataFrame, methods: list[tuple[str, str]]) -> Image.Image:
    """The paper's Fig. 5A: the distribution of per-class gains over real_p for each of ``methods``
    ((method, why it is shown)), as overlaid histograms on shared bins, with each method's mean."""
    plt, figure = _figure(7.5, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    values = {m: [100 * v for v in gains.filter(pl.col("method") == m)["gain"].to_list()] for m, _ in methods}
    everything = [v for vs in values.values() for v in vs]
    if everything:
        low, high = min(everything + [0.0]), max(everything + [0.0])
        bins = [low + (high - low) * i / 20 for i in range(21)] if high > low else 10
        for (method, _), colour in zip(methods, ("tab:green", "tab:red", "tab:blue")):
            if values[method]:
                axes.hist(
                    values[method],
                    bins=bins,
                    alpha=0.5,
                    color=colour,
                    label=f"{method} (mean {sum(values[method]) / len(values[method]):+.1f} pp)",
                )
        axes.legend(fontsize=8)
    else:
        axes.text(
            0.5,
            0.5,
            "no per-class gains: real_p, retrieval or a diffusion row has not run",
            transform=axes.transAxes,
            ha="center",
        )
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel("per-class test accuracy gain over real_p (pp)")
    axes.set_ylabel("classes")
    axes.set_title("Distribution of per-class gains (paper Fig. 5A)")
    return _to_image(plt, figure)


def sample_figure(rows: list[tuple[str, list[str | None]]], columns: list[str], cell: float = 0.9) -> Image.Image:
    """A labelled grid of images: one row per (label, paths) — the real target, each method's images,
    the retrieved ones — and one column per class (``columns``, titled by the first lemma); a missing
    image is a blank cell."""
    plt, figure = _figure(1.6 + cell * len(columns), 0.3 + cell * len(rows))
    grid = figure.subplots(len(rows), len(columns), squeeze=False)
    for r, (label, paths) in enumerate(rows):
        for c, path in enumerate(paths):
            axes = grid[r][c]
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set_visible(False)
            if path is not None:
                with Image.open(path) as image:
                    axes.imshow(image.convert("RGB"))
            if c == 0:
                axes.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0:  # a class's first lemma, wrapped to the cell: "jersey, T-shirt, tee shirt" → "jersey"
                axes.set_title(textwrap.fill(columns[c].split(",")[0], 12), fontsize=8)
    figure.subplots_adjust(wspace=0.05, hspace=0.05)
    return _to_image(plt, figure)


def compute_figure(summary: pl.DataFrame) -> Image.Image:
    """Measured wall seconds per method, stacked by stage (generation, fine-tuning, classifier
    training …); the steps every method shares (embedding the pool, judging) are one row, "shared"."""
    plt, figure = _figure(8, 0.4 * max(summary["method"].n_unique(), 3) + 1.5)
    axes = figure.add_subplot(1, 1, 1)
    frame = summary.with_columns(pl.col("method").fill_null("shared"))
    methods = frame["method"].unique(maintain_order=True).to_list()
    stages = frame["stage"].unique(maintain_order=True).to_list()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    left = [0.0] * len(methods)
    for number, stage in enumerate(stages):
        part = {r["method"]: r["seconds"] for r in frame.filter(pl.col("stage") == stage).iter_rows(named=True)}
        values = [part.get(m, 0.0) for m in methods]
        axes.barh(range(len(methods)), values, left=left, color=colours[number % len(colours)], label=stage)
        left = [a + b for a, b in zip(left, values)]
    axes.set_yticks(range(len(methods)), methods)
    axes.invert_yaxis()
    axes.set_xlabel("measured wall seconds on this machine")
    axes.set_title("Compute per method and stage (measured)")
    axes.legend(fontsize=8)
    return _to_image(plt, figure)


def scaling_figure(summary: pl.DataFrame) -> Image.Image:
    """Top-1 against the augmentation ratio (percent of the target's size), one line per method with
    95 % intervals (the paper's Fig. 5B); ratio 0 is real_p; a hollow marker is a cell some class
    could not fill; where such classes left the cell, ▼ and ▲ mark its best- and worst-case accuracy
    over every class (their test images all right, all wrong), and the line runs through its accuracy
    over the classes it kept."""
    plt, figure = _figure(7, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, method in enumerate(summary["method"].unique(maintain_order=True)):
        part = summary.filter(pl.col("method") == method).sort("ratio")
        bounded = "excluded_short_classes" in part.columns
        excluded = part["excluded_short_classes"].to_list() if bounded else [0] * part.height
        x = [100 * r for r in part["ratio"].to_list()]
        means = part["top1_mean"].to_list()
        worst = part["top1_worst"].to_list() if bounded else means
        best = part["top1_best"].to_list() if bounded else means
        y = [float("nan") if m is None else 100 * m for m in means]
        errors = [0 if e is None else 100 * e for e in part["top1_ci95"].to_list()]
        colour = colours[number % len(colours)]
        axes.errorbar(x, y, yerr=errors, color=colour, marker="o", capsize=3, label=method)
        for xi, yi, short, out, lo, hi in zip(x, y, part["short_classes"].to_list(), excluded, worst, best):
            if short:
                axes.plot([xi], [yi], "o", markersize=11, markerfacecolor="none", markeredgecolor=colour)
            if out:
                axes.plot([xi], [100 * hi], "v", color=colour, markersize=7)
                axes.plot([xi], [100 * lo], "^", color=colour, markersize=7)
    low, high = axes.get_ylim()
    axes.set_ylim(max(0.0, low), min(100.0, high))  # intervals of two runs are wide; accuracy stays within 0–100
    axes.set_xlabel("augmentation images (% of the target's size; 0: real_p)")
    axes.set_ylabel("top-1 (%), 95 % CI")
    axes.set_title("Scaling (paper Fig. 5B); ring: some class could not be filled; ▼ ▲ best and worst case")
    axes.legend(fontsize=8)
    return _to_image(plt, figure)


def comparisons_figure(comparisons: pl.DataFrame, methods: list[str]) -> Image.Image:
    """Which differences are real, as one matrix: cell (row a, column b) is a's mean top-1 minus b's in
    percentage points, coloured by sign and size; a star marks a difference that stays significant
    (p < 0.05) after Holm's adjustment over every pair."""
    import numpy as np

    index = {m: i for i, m in enumerate(methods)}
    size = len(methods)
    matrix = np.full((size, size), np.nan)
    stars = np.zeros((size, size), dtype=bool)
    for row in comparisons.iter_rows(named=True):
        a, b = index.get(row["method_a"]), index.get(row["method_b"])
        if a is None or b is None:
            continue
        matrix[a, b], matrix[b, a] = 100 * row["difference"], -100 * row["difference"]
        stars[a, b] = stars[b, a] = row["p_holm"] is not None and row["p_holm"] < 0.05
    plt, figure = _figure(1.0 + 0.75 * size, 0.6 + 0.6 * size)
    axes = figure.add_subplot(1, 1, 1)
    limit = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0
    shown = axes.imshow(matrix, cmap="RdBu", vmin=-limit, vmax=limit)
    for a in range(size):
        for b in range(size):
            if np.isfinite(matrix[a, b]):
                text = f"{matrix[a, b]:+.1f}" + ("*" if stars[a, b] else "")
                axes.text(b, a, text, ha="center", va="center", fontsize=8)
    axes.set_xticks(range(size), methods, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(size), methods, fontsize=8)
    axes.set_title("row − column, top-1 pp; * p < 0.05 after Holm", fontsize=9)
    figure.colorbar(shown, ax=axes, shrink=0.8)
    return _to_image(plt, figure)


def cost_figure(costs: pl.DataFrame) -> Image.Image:
    """The cost of a point of accuracy: each method's gain over real_p (95 % interval) against the
    measured seconds that made its extra images (left, log scale), and the paper's gain against its
    reported hours for the same stages (right)."""
    plt, figure = _figure(11, 4.2)
    ours, theirs = figure.subplots(1, 2)
    for row in costs.iter_rows(named=True):
        if row["augmentation_seconds"]:
            ours.errorbar(
                [row["augmentation_seconds"]],
                [100 * row["gain"]],
                yerr=[0 if row["gain_ci95"] is None else 100 * row["gain_ci95"]],
                marker="o",
                capsize=3,
            )
            ours.annotate(row["method"], (row["augmentation_seconds"], 100 * row["gain"]), fontsize=7)
        if row["paper_hours"] and row["paper_gain"] is not None:
            theirs.plot([row["paper_hours"]], [100 * row["paper_gain"]], "o")
            theirs.annotate(row["method"], (row["paper_hours"], 100 * row["paper_gain"]), fontsize=7)
    for axes, unit, title in (
        (ours, "measured seconds making the extra images", "ours (95 % CI)"),
        (theirs, "the paper's hours (§4.4)", "the paper"),
    ):
        axes.set_xscale("log")
        axes.set_xlabel(unit)
        axes.set_ylabel("gain over real_p (pp)")
        axes.set_title(title, fontsize=9)
        axes.axhline(0, color="#999999", linewidth=0.8)
    return _to_image(plt, figure)
