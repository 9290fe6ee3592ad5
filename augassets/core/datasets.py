"""Image sources and the paper's splits.

Two sources behind one small interface: Fashion-MNIST's IDX files (the mini world) and class-folder
datasets (ImageNet, Caltech256, any ImageFolder). Downstream code only ever sees image *files*: the
Fashion-MNIST images a split selects are written out as PNGs, folder datasets are used in place.

Splits (paper section 3): per class, a seeded permutation of the training images is consumed in order —
test (only where the dataset has no official test split), val, target (``real_p``), extra real
(``real_2p``) — skipping and counting files that fail to decode. Only the images a split needs are
decoded, so ImageNet's 1.28M files are never all read.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from ..profiles import DatasetSpec, SplitSpec
from .files import save_image_atomic
from .images import ImageStatus, inspect_image
from .target_domain import render

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
SPLIT_SCHEMA = {"split": pl.Utf8, "wnid": pl.Utf8, "label": pl.Int64, "item": pl.Utf8, "path": pl.Utf8}
SPLITS = ("target", "val", "real_extra", "test")


class DatasetError(RuntimeError):
    pass


def read_idx(path: Path, remedy: str = "replace the file") -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format Fashion-MNIST ships in. A file that cannot be
    read is a ``DatasetError`` naming it and ``remedy`` (what to do: the setting, the install command)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, zlib.error, OSError) as error:  # truncated or corrupted gzip, unreadable file
        raise DatasetError(
            f"{path} cannot be read ({type(error).__name__}: {error}); it is truncated or corrupted: {remedy}"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file: {remedy}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: header says {shape}, found {array.size} values: {remedy}")
    return array.reshape(shape)


def design_folder(design) -> str:
    """The export folder of a target design: ``<name>-<digest of its settings>`` (``plain``: none)."""
    from ..versions import code_version

    return code_version(design.name, design) if design else "plain"


class FashionMnistSource:
    """Fashion-MNIST from its four IDX files; selected images are exported as PNG under ``export_dir``,
    in a folder per target design (its name and a digest of its settings): an image already there is
    reused, so a home that staged another design never hands out that design's pictures."""

    FILES = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }

    def __init__(self, spec: DatasetSpec, export_dir: Path):
        self.root = spec.root
        self.design = spec.target
        self.export_dir = export_dir / design_folder(spec.target)
        self.remedy = f"download it again, or point {spec.root_env} at a good copy ({spec.install_hint})"
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray] = {}
        for names in self.FILES.values():
            for name in names:
                if not (self.root / name).is_file():
                    raise DatasetError(
                        f"Fashion-MNIST file {self.root / name} is missing (setting {spec.root_env}): "
                        f"{spec.install_hint}"
                    )
        self.has_test_split = True

    def _part(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        if part not in self._labels:
            images_name, labels_name = self.FILES[part]
            self._labels[part] = read_idx(self.root / labels_name, self.remedy)
            self._images[part] = read_idx(self.root / images_name, self.remedy)
        return self._images[part], self._labels[part]

    def pixels(self, item: str) -> np.ndarray:
        """The 28×28 uint8 garment of an item such as ``train/123``, as Fashion-MNIST ships it."""
        part, index = item.split("/")
        return self._part(part)[0][int(index)]

    def image(self, item: str) -> Image.Image:
        """The item's target-domain picture: the garment staged by the dataset's ``TargetDesign``."""
        return render(self.pixels(item), item, self.design)

    def items(self, part: str, folder: str, source_label: int) -> list[str]:
        _, labels = self._part(part)
        return [f"{part}/{i}" for i in np.flatnonzero(labels == source_label)]

    def materialize(self, item: str, wnid: str, non_rgb: str) -> tuple[str | None, ImageStatus]:
        part, index = item.split("/")
        path = self.export_dir / part / wnid / f"{int(index):05d}.png"
        if not path.exists():
            save_image_atomic(self.image(item), path)
        return str(path), ImageStatus.OK


class ImageFolderSource:
    """``<root>/<train_dir>/<class folder>/<image>`` (and ``<test_dir>`` for an official test split)."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.root = spec.root
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset folder {self.root} does not exist (setting {spec.root_env}): {spec.install_hint}"
            )
        self.has_test_split = bool(spec.test_dir)

    def _folder(self, part: str, folder: str) -> Path:
        sub = self.spec.train_dir if part == "train" else self.spec.test_dir
        return self.root / sub / folder if sub else self.root / folder

    def items(self, part: str, folder: str, source_label: int) -> list[str]:
        directory = self._folder(part, folder)
        if not directory.is_dir():
            raise DatasetError(
                f"class folder {directory} is missing (setting {self.spec.root_env}; each catalog class needs a folder)"
            )
        return sorted(str(p) for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

    def materialize(self, item: str, wnid: str, non_rgb: str) -> tuple[str | None, ImageStatus]:
        status = inspect_image(item, non_rgb)
        return (item if status.usable else None), status


def open_source(spec: DatasetSpec, export_dir: Path) -> FashionMnistSource | ImageFolderSource:
    if spec.kind == "fashion_mnist":
        return FashionMnistSource(spec, export_dir)
    if spec.kind == "image_folder":
        return ImageFolderSource(spec)
    raise ValueError(f"unknown dataset kind {spec.kind!r} (profile setting dataset.kind)")


@dataclass
class SplitReport:
    """What the splits asset reports: per-class counts and every skipped file with its reason."""

    counts: dict[str, Counter] = field(default_factory=dict)  # wnid -> split -> n
    skipped: list[dict] = field(default_factory=list)  # {wnid, item, reason}
    converted: int = 0

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(row["reason"] for row in self.skipped))


def class_rates(split: SplitSpec, source_labels: list[int], per_class_streams: bool = False) -> np.ndarray:
    """Per-class keep rates: ``train_fraction`` scaled by a seeded uniform draw in [1 - spread, 1].

    Each class's draw is fixed by its ``source_label`` (catalog.ClassEntry), so adding classes never
    changes another class's rate: one seeded stream indexed by the label for a packaged class list,
    one seeded stream per class (keyed by its WordNet offset) for a folder dataset."""
    low = 1.0 - split.class_rate_spread
    if per_class_streams:
        draws = [np.random.default_rng([split.seed, 7919, key]).uniform(low, 1.0) for key in source_labels]
        return split.train_fraction * np.asarray(draws)
    rng = np.random.default_rng([split.seed, 7919])
    return split.train_fraction * rng.uniform(low, 1.0, size=max(source_labels) + 1)[source_labels]


def _take(
    stream: Iterator[str], n: int | None, wnid: str, source, split: SplitSpec, report: SplitReport, what: str
) -> list[tuple[str, str]]:
    """The next ``n`` usable images of ``stream`` (all of them when ``n`` is None) as (item, path).

    Files that fail to decode are skipped and recorded in ``report`` with their reason."""
    taken = []
    while n is None or len(taken) < n:
        item = next(stream, None)
        if item is None:
            if n is None:
                break
            raise DatasetError(
                f"class {wnid}: only {len(taken)} usable images left for the {what} split, {n} needed "
                f"({len(report.skipped)} skipped so far); lower split.train_fraction or add images"
            )
        path, status = source.materialize(item, wnid, split.non_rgb)
        if path is None:
            report.skipped.append({"wnid": wnid, "item": item, "reason": status.value})
            continue
        report.converted += status == ImageStatus.CONVERTED
        taken.append((item, path))
    return taken


def make_splits(
    catalog: pl.DataFrame,
    dataset: DatasetSpec,
    split: SplitSpec,
    export_dir: Path,
    progress: Callable[[str], None] | None = None,
) -> tuple[pl.DataFrame, SplitReport]:
    """Draw target / val / real_extra / test for every catalog class; deterministic for a given seed."""
    say = progress or log.info
    source = open_source(dataset, export_dir)
    rates = class_rates(split, catalog["source_label"].to_list(), per_class_streams=dataset.class_list == "folders")
    report, rows = SplitReport(), []
    for row, rate in zip(catalog.iter_rows(named=True), rates):
        wnid, label = row["wnid"], row["label"]
        train_items = source.items("train", row["folder"], row["source_label"])
        if not train_items:
            raise DatasetError(f"class {wnid}: no images in its training folder {row['folder']!r}")
        order = np.random.default_rng([split.seed, row["source_label"]]).permutation(len(train_items))
        stream = (train_items[i] for i in order)
        n = len(train_items)
        drawn: dict[str, list[tuple[str, str]]] = {}
        if source.has_test_split:
            test_items = source.items("test", row["folder"], row["source_label"])
            if split.max_test_per_class:
                test_items = test_items[: split.max_test_per_class]
            drawn["test"] = _take(iter(test_items), None, wnid, source, split, report, "test")
        else:
            n_holdout = max(1, round(dataset.holdout_fraction * n))
            drawn["test"] = _take(stream, n_holdout, wnid, source, split, report, "test")
        n_target = max(1, round(rate * n))
        n_val = max(1, round(split.val_fraction / split.train_fraction * n_target)) if split.val_fraction else n_target
        if dataset.holdout_fraction:
            n_val = max(1, round(dataset.holdout_fraction * n))
            if split.train_fraction + 2 * dataset.holdout_fraction >= 0.999:
                n_target = None  # 80/10/10 (Caltech256): the target is every usable image test and val left
        try:
            drawn["val"] = _take(stream, n_val, wnid, source, split, report, "val")
            drawn["target"] = _take(stream, n_target, wnid, source, split, report, "target")
            if split.real_extra:
                drawn["real_extra"] = _take(stream, n_target, wnid, source, split, report, "real_extra")
        except DatasetError:
            reasons = Counter(r["reason"] for r in report.skipped if r["wnid"] == wnid)
            if not drawn.get("val") and sum(reasons.values()) >= n - len(drawn.get("test", [])) * (
                not source.has_test_split
            ):
                raise DatasetError(
                    f"class {wnid}: its folder {row['folder']!r} has no valid image ({n} files, skipped: "
                    f"{dict(reasons)}); fix the files or drop the class"
                ) from None
            raise
        if not drawn["test"]:
            raise DatasetError(f"class {wnid}: no usable test image in folder {row['folder']!r}")
        report.counts[wnid] = Counter({name: len(pairs) for name, pairs in drawn.items()})
        for name in (name for name in SPLITS if name in drawn):
            rows.extend(
                {"split": name, "wnid": wnid, "label": label, "item": item, "path": path} for item, path in drawn[name]
            )
        say(f"splits: class {wnid} ({row['name']}): " + ", ".join(f"{k}={v}" for k, v in report.counts[wnid].items()))
    return pl.DataFrame(rows, schema=SPLIT_SCHEMA), report
