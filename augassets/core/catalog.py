"""The class catalog: one row per class with the names every prompt method needs.

Class keys are WordNet ids (``n03595614``), never names: Dagster partition keys reject ``,|[]`` and names
are full of commas. Caltech256 has no wnids; its keys are ``c001``…``c256`` and its names come from the
folder names, as the paper uses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import polars as pl

from ..profiles import DatasetSpec
from .wordnet import WordNet, WordNetError

CATALOG_SCHEMA = {
    "wnid": pl.Utf8,
    "label": pl.Int64,
    "lemmas": pl.List(pl.Utf8),
    "name": pl.Utf8,
    "name_nows": pl.Utf8,
    "hypernym": pl.Utf8,
    "definition": pl.Utf8,
    "folder": pl.Utf8,
    "source_label": pl.Int64,
}


@dataclass(frozen=True)
class ClassEntry:
    key: str  # wnid, or c### for Caltech256
    folder: str  # the class folder name in an ImageFolder dataset
    # The class's stable number: its index in the source's class list (Fashion-MNIST label, ImageNet
    # index), or for a folder dataset its WordNet offset. Seeds its split draws, so a class keeps
    # its images when other classes are added.
    source_label: int


@dataclass(frozen=True)
class SkippedClass:
    folder: str
    reason: str


def data_lines(filename: str) -> list[str]:
    """Non-comment lines of a reference table shipped in ``augassets/data``."""
    text = resources.files("augassets.data").joinpath(filename).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def class_entries(dataset: DatasetSpec) -> list[ClassEntry]:
    """The classes of the dataset's class list, in label order. ``folders`` lists the wnid-named class
    folders of the dataset itself (any ImageFolder dataset whose folders are WordNet ids)."""
    class_list = dataset.class_list
    if class_list == "fashion_mnist":
        rows = [line.split("\t") for line in data_lines("fashion_mnist_wordnet.tsv")]
        return [ClassEntry(key=r[2], folder=r[2], source_label=int(r[0])) for r in rows]
    if class_list == "imagenet":
        rows = [line.split("\t") for line in data_lines("imagenet_classes.tsv")]
        return [ClassEntry(key=r[1], folder=r[1], source_label=int(r[0])) for r in rows]
    if class_list == "caltech256":
        folders = [line.strip() for line in data_lines("caltech256_classes.txt")]
        return [
            ClassEntry(key=f"c{folder[:3]}", folder=folder, source_label=int(folder[:3]) - 1)
            for folder in folders
            if not folder.endswith(".clutter")
        ]
    if class_list == "folders":
        if not dataset.class_root.is_dir():
            raise FileNotFoundError(
                f"class folder root {dataset.class_root} does not exist (setting {dataset.root_env}): "
                f"{dataset.install_hint}"
            )
        folders = sorted(p.name for p in dataset.class_root.iterdir() if p.is_dir())
        return [ClassEntry(key=folder, folder=folder, source_label=wordnet_offset(folder)) for folder in folders]
    raise ValueError(f"unknown class list {class_list!r} (profile setting dataset.class_list)")


def wordnet_offset(folder: str) -> int:
    """``n03595614`` -> 3595614; -1 for a name that is not a WordNet noun id."""
    return int(folder[1:]) if re.fullmatch(r"n\d{8}", folder) else -1


def usable_classes(
    dataset: DatasetSpec, max_classes: int = 0, wordnet: WordNet | None = None
) -> tuple[list[ClassEntry], list[SkippedClass]]:
    """The first ``max_classes`` classes (0: all) of the dataset's class list, and the class folders
    skipped with their reason: in a folder dataset, a folder whose name is not a WordNet 3.0 noun id
    is skipped, not fatal (the packaged lists hold only valid ids)."""
    entries, skipped = class_entries(dataset), []
    if dataset.class_list == "folders":
        wordnet = wordnet or WordNet()
        usable = []
        for entry in entries:
            try:
                wordnet.synset(entry.key)
            except WordNetError as error:
                skipped.append(
                    SkippedClass(entry.folder, f"{error}; class folders must be named by WordNet 3.0 noun ids")
                )
            else:
                usable.append(entry)
        entries = usable
    return (entries[:max_classes] if max_classes else entries), skipped


def name_without_whitespace(name: str) -> str:
    """Method ②'s w(n): the class name with all whitespace removed ("tiger shark" -> "tigershark")."""
    return re.sub(r"\s+", "", name)


def caltech_name(folder: str) -> str:
    """``'004.baseball-bat'`` -> ``'baseball bat'``; the ``-101`` suffix of Caltech-101 duplicates dropped."""
    name = folder.split(".", 1)[1]
    name = re.sub(r"-101$", "", name)
    return name.replace("-", " ").replace("_", " ")


def build_catalog(
    dataset: DatasetSpec,
    max_classes: int = 0,
    wordnet: WordNet | None = None,
    skipped: list[SkippedClass] | None = None,
) -> pl.DataFrame:
    """One row per class: key, contiguous label, lemmas, name (lemmas joined by ", "), no-ws name,
    first hypernym and definition. Class folders that are not WordNet ids are left out and appended
    to ``skipped``; an unknown wnid in a packaged class list raises, naming it."""
    class_list = dataset.class_list
    wordnet = wordnet or (WordNet() if class_list != "caltech256" else None)
    entries, skipped_here = usable_classes(dataset, max_classes, wordnet)
    if skipped is not None:
        skipped.extend(skipped_here)
    if not entries:
        reasons = "; ".join(f"{s.folder!r}: {s.reason}" for s in skipped_here[:3])
        raise ValueError(
            f"no usable class in class list {class_list!r} ({len(skipped_here)} folders skipped: {reasons})"
        )
    rows = []
    for label, entry in enumerate(entries):
        if class_list == "caltech256":
            lemmas, hypernym, definition = [caltech_name(entry.folder)], "", ""
        else:
            try:
                synset = wordnet.synset(entry.key)
                hypernym = wordnet.first_hypernym_name(entry.key)
            except WordNetError as error:
                raise WordNetError(
                    f"class {entry.folder!r} of class list {class_list!r}: {error}; class keys must be WordNet 3.0 "
                    "noun ids (rename or remove that class folder)"
                ) from None
            lemmas, definition = list(synset.lemmas), synset.definition
        name = ", ".join(lemmas)
        rows.append(
            {
                "wnid": entry.key,
                "label": label,
                "lemmas": lemmas,
                "name": name,
                "name_nows": name_without_whitespace(name),
                "hypernym": hypernym,
                "definition": definition,
                "folder": entry.folder,
                "source_label": entry.source_label,
            }
        )
    return pl.DataFrame(rows, schema=CATALOG_SCHEMA)
