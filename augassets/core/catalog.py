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

from .wordnet import WordNet

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
    source_label: int  # the class index in the source dataset (Fashion-MNIST label, ImageNet index)


def data_lines(filename: str) -> list[str]:
    """Non-comment lines of a reference table shipped in ``augassets/data``."""
    text = resources.files("augassets.data").joinpath(filename).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def class_entries(class_list: str) -> list[ClassEntry]:
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
    raise ValueError(f"unknown class list {class_list!r} (profile setting dataset.class_list)")


def name_without_whitespace(name: str) -> str:
    """Method ②'s w(n): the class name with all whitespace removed ("tiger shark" -> "tigershark")."""
    return re.sub(r"\s+", "", name)


def caltech_name(folder: str) -> str:
    """``'004.baseball-bat'`` -> ``'baseball bat'``; the ``-101`` suffix of Caltech-101 duplicates dropped."""
    name = folder.split(".", 1)[1]
    name = re.sub(r"-101$", "", name)
    return name.replace("-", " ").replace("_", " ")


def build_catalog(class_list: str, max_classes: int = 0, wordnet: WordNet | None = None) -> pl.DataFrame:
    """One row per class: key, contiguous label, lemmas, name (lemmas joined by ", "), no-ws name,
    first hypernym and definition. Raises on an unknown wnid, naming it."""
    entries = class_entries(class_list)
    if max_classes:
        entries = entries[:max_classes]
    rows = []
    for label, entry in enumerate(entries):
        if class_list == "caltech256":
            lemmas, hypernym, definition = [caltech_name(entry.folder)], "", ""
        else:
            wordnet = wordnet or WordNet()
            synset = wordnet.synset(entry.key)
            lemmas, definition = list(synset.lemmas), synset.definition
            hypernym = wordnet.first_hypernym_name(entry.key)
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
