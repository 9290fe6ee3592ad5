"""Checkpoint selection for the personalized methods (paper §3.1): per method, one classifier per
checkpoint candidate, trained on the target plus that candidate's images of every class (drawn like
the method's replicate sets) and scored on val; the best val accuracy chooses the candidate.

Dagster-free: ``assets/selection.py`` reads the tables, calls :func:`score_candidates` and records
what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from .augment import augmented_sets, training_order
from .methods import get_method


def candidate_rank(label: str) -> int:
    """The order candidates are listed (and ties of val accuracy broken) in: best val, best train, epoch 1, 2 …"""
    ranks = {"best_val": 0, "best_train": 1}
    return ranks[label] if label in ranks else 1 + int(label.removeprefix("epoch_"))


@dataclass(frozen=True)
class SelectionData:
    """What every candidate's classifier shares: the splits (the target is read from them), the val
    images, the class count, the classifier's settings and the seeds."""

    splits: pl.DataFrame
    val_images: object  # core.classifier.LabeledImages
    classes: int
    spec: object  # profiles.ClassifierSpec
    generation_seed: int
    training_seed: int


def score_candidates(
    method: str, manifest: pl.DataFrame, data: SelectionData, say: Callable[[str], None], debug: Callable[[str], None]
) -> tuple[list[dict], list[dict]]:
    """One val-scored classifier per candidate label of ``method`` (``manifest``: its candidate images,
    columns candidate, wnid, label, path, rank). A label whose images are another's, class for class,
    reuses that one's run. Returns one row per label and the runs actually trained."""
    from .classifier import LabeledImages, train_classifier

    rows = []
    trained: dict[tuple, dict] = {}
    for label in sorted(manifest["candidate"].unique().to_list(), key=candidate_rank):
        images = manifest.filter(pl.col("candidate") == label).select("wnid", "label", "path", "rank")
        same = tuple(sorted(images["path"].to_list()))
        if same not in trained:
            train = training_order(
                augmented_sets(get_method(method), data.splits, 1, images=images, seed=data.generation_seed)
            )
            result = train_classifier(
                LabeledImages(train["path"].to_list(), train["label"].to_list()),
                data.val_images,
                None,
                data.classes,
                data.spec,
                seed=data.training_seed,
                progress=lambda line, m=method, c=label: debug(f"selection[{m}, {c}] {line}"),
            )
            trained[same] = {
                "val_top1": result.best_val_top1,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "train_images": result.train_images,
                "train_seconds": result.train_seconds,
                "same_images_as": label,
            }
        run = trained[same]
        rows.append({"method": method, "candidate": label, **run})
        shared = "" if run["same_images_as"] == label else f" (the images of {run['same_images_as']}: one run)"
        say(f"checkpoint_selection[{method}]: candidate {label}: val top-1 {run['val_top1']:.4f}{shared}")
    return rows, list(trained.values())


def choose(rows: list[dict]) -> dict:
    """The row with the best val top-1; ties go to the candidate listed first (:func:`candidate_rank`)."""
    return max(rows, key=lambda r: (r["val_top1"], -candidate_rank(r["candidate"])))
