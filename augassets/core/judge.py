"""The unbiased class-fidelity judge and the domain-gap measurements of the mini world (DESIGN §2).

*Class fidelity* asks whether an augmentation image shows the class it was made for. A classifier
trained on the target domain alone cannot answer that for images of another domain: it measures how
target-like an image looks (still worth reporting, as *target-domain recognizability*). The judge
is trained on both domains instead — web-domain images made exactly like the pool's class images,
from Fashion-MNIST training images that neither the splits nor the pool use, and the same images'
target-domain originals — and validated on both: the real test split and held-out web-domain images.

The same held-out web-domain images measure the *domain transfer ratio*: a target-trained
classifier's accuracy on them (correctly labelled pool-domain images) ÷ its accuracy on the test
split, overall and with one part of the web transform applied at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from ..profiles import PoolSpec
from .files import save_image_atomic
from .web_pool import WEB_TRANSFORM_PARTS, to_web_domain

JUDGE_SPLITS = ("train", "val", "holdout")
JUDGE_SCHEMA = {
    "split": pl.Utf8,
    "domain": pl.Utf8,
    "wnid": pl.Utf8,
    "label": pl.Int64,
    "item": pl.Utf8,
    "path": pl.Utf8,
}


def choose_judge_items(unused: dict[str, list[str]], spec: PoolSpec) -> dict[str, dict[str, list[str]]]:
    """Per class, disjoint (train, val, holdout) item lists drawn (seeded) from ``unused``: training
    images that neither the splits nor the pool use."""
    rng = np.random.default_rng([spec.seed, 5303])
    chosen = {}
    for wnid, items in unused.items():
        order = [items[i] for i in rng.permutation(len(items))]
        sizes = spec.judge_per_class
        if sum(sizes) > len(order):
            raise ValueError(
                f"class {wnid}: the judge needs {sum(sizes)} unused training images, {len(order)} are left "
                "(lower PoolSpec.judge_per_class or PoolSpec.per_class)"
            )
        bounds = np.cumsum((0, *sizes))
        chosen[wnid] = {split: order[bounds[i] : bounds[i + 1]] for i, split in enumerate(JUDGE_SPLITS)}
    return chosen


def web_rendering(
    pixels: np.ndarray, item: str, spec: PoolSpec, parts: tuple[str, ...] = WEB_TRANSFORM_PARTS
) -> Image.Image:
    """The web-domain version of one item, seeded by the item, so the same item rendered with fewer
    ``parts`` differs only by the parts left out."""
    rng = np.random.default_rng([spec.seed, 8117, int(item.rsplit("/", 1)[-1])])
    image, _ = to_web_domain(pixels, spec, rng, parts=parts)
    return image


def write_judge_images(
    chosen: dict[str, dict[str, list[str]]],
    labels: dict[str, int],
    pixels: Callable[[str], np.ndarray],
    target_image: Callable[[str], Image.Image],
    spec: PoolSpec,
    folder: Path,
    final: Path,
) -> pl.DataFrame:
    """Write the judge's images into ``folder`` (renamed to ``final`` by the caller): for train and val
    both domains of each item (``pixels``: the garment the web rendering moves; ``target_image``: its
    target-domain picture), for holdout the web domain (the target domain's held-out set is the test
    split). Returns the table of (split, domain, wnid, label, item, path)."""
    rows = []
    for wnid, splits in chosen.items():
        for split, items in splits.items():
            for item in items:
                name = item.replace("/", "_")
                renderings = [("web", web_rendering(pixels(item), item, spec))]
                if split != "holdout":
                    renderings.append(("target", target_image(item).convert("RGB")))
                for domain, image in renderings:
                    relpath = Path(split) / domain / wnid / f"{name}.png"
                    save_image_atomic(image, folder / relpath)
                    rows.append(
                        {
                            "split": split,
                            "domain": domain,
                            "wnid": wnid,
                            "label": labels[wnid],
                            "item": item,
                            "path": str(final / relpath),
                        }
                    )
    return pl.DataFrame(rows, schema=JUDGE_SCHEMA)


def transfer_breakdown(
    holdout: pl.DataFrame,
    pixels: Callable[[str], np.ndarray],
    spec: PoolSpec,
    predict: Callable[[list[Image.Image]], np.ndarray],
) -> dict[str, float]:
    """A target-trained classifier's accuracy (``predict``: images → labels) on the held-out items
    moved to the web domain by one part of the transform at a time, and by all of them."""
    labels = holdout["label"].to_numpy()
    variants = {"none": ()} | {part: (part,) for part in WEB_TRANSFORM_PARTS} | {"all": WEB_TRANSFORM_PARTS}
    accuracy = {}
    for name, parts in variants.items():
        images = [web_rendering(pixels(item), item, spec, parts) for item in holdout["item"]]
        accuracy[name] = float((predict(images) == labels).mean())
    return accuracy


def accuracy_by_class(predicted: Iterable[int], labels: Iterable[int]) -> dict[int, float]:
    predicted, labels = np.asarray(list(predicted)), np.asarray(list(labels))
    return {int(c): float((predicted[labels == c] == c).mean()) for c in np.unique(labels)}


@dataclass(frozen=True)
class SampleFidelity:
    """How recognizable a model's samples are: by the judge (overall and relative to its own accuracy
    on held-out web-domain images) and by a target-domain classifier, overall and per class."""

    per_class: pl.DataFrame
    class_fidelity: float
    judge_accuracy: float
    target_recognizability: float

    @property
    def relative(self) -> float:
        return self.class_fidelity / self.judge_accuracy


def sample_fidelity(
    catalog: pl.DataFrame,
    labels: np.ndarray,
    judged: np.ndarray,
    recognized: np.ndarray,
    judge_holdout: dict[int, float],
) -> SampleFidelity:
    """``labels``: the class each sample was made for; ``judged`` / ``recognized``: the judge's and the
    target classifier's predictions for them; ``judge_holdout``: the judge's per-class accuracy on
    held-out web-domain images. ``catalog`` has ``label`` (and whatever else the table should show)."""

    def share(predicted: np.ndarray, c: int) -> float:
        return float((predicted[labels == c] == c).mean()) if (labels == c).any() else float("nan")

    per_class = catalog.with_columns(
        pl.Series("class_fidelity", [share(judged, c) for c in catalog["label"]]),
        pl.Series("judge_holdout_web", [judge_holdout[c] for c in catalog["label"]]),
        pl.Series("target_recognizability", [share(recognized, c) for c in catalog["label"]]),
        pl.Series("samples", [int((labels == c).sum()) for c in catalog["label"]]),
    ).with_columns((pl.col("class_fidelity") / pl.col("judge_holdout_web")).alias("relative_fidelity"))
    overall = float((judged == labels).mean()) if len(labels) else float("nan")
    recognizable = float((recognized == labels).mean()) if len(labels) else float("nan")
    return SampleFidelity(per_class, overall, float(np.mean(list(judge_holdout.values()))), recognizable)
