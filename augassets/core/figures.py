"""Figures for asset metadata and reports, drawn with matplotlib's headless Agg backend.

Each function returns a PIL image (the caller embeds it in metadata or saves it); a figure that fails
to draw raises, and callers that treat figures as extras catch and log it.
"""

from __future__ import annotations

import io

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
