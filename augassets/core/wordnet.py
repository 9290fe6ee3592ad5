"""A small reader for WordNet 3.0 noun synsets in the WNDB format.

Debian's ``wordnet-base`` installs the database under ``/usr/share/wordnet``. Parsing ``data.noun``
directly is simpler than configuring nltk for that layout, and it is all the catalog needs: lemmas,
the first hypernym and the gloss of a synset, looked up by its ImageNet-style id ``n<offset>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
INSTALL_HINT = (
    "install it with `apt-get install wordnet-base` (Debian) or point AUGASSETS_WORDNET_DIR at a "
    "WordNet 3.0 dict folder"
)


@dataclass(frozen=True)
class Synset:
    wnid: str
    lemmas: tuple[str, ...]
    hypernym_wnids: tuple[str, ...]
    definition: str


class WordNetError(RuntimeError):
    pass


def wordnet_dir() -> Path:
    return Path(os.environ.get("AUGASSETS_WORDNET_DIR", DEFAULT_WORDNET_DIR))


def _parse_data_line(line: str) -> Synset:
    """Parse one ``data.noun`` line: offset lex_filenum ss_type w_cnt (word lex_id)* p_cnt (ptr)* | gloss."""
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset = fields[0]
    word_count = int(fields[3], 16)
    words = fields[4 : 4 + 2 * word_count : 2]
    pos = 4 + 2 * word_count
    pointer_count = int(fields[pos])
    pointers = [fields[pos + 1 + 4 * i : pos + 5 + 4 * i] for i in range(pointer_count)]
    hypernyms = tuple("n" + p[1] for p in pointers if p[0] in ("@", "@i") and p[2] == "n")
    lemmas = tuple(w.replace("_", " ") for w in words)
    return Synset(wnid="n" + offset, lemmas=lemmas, hypernym_wnids=hypernyms, definition=gloss.strip())


class WordNet:
    """Random access to noun synsets by wnid (``n`` + 8-digit byte offset into ``data.noun``)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else wordnet_dir()
        self.data_path = self.root / "data.noun"
        if not self.data_path.is_file():
            raise WordNetError(f"WordNet 3.0 noun database not found at {self.data_path}: {INSTALL_HINT}")
        self._cache: dict[str, Synset] = {}

    def synset(self, wnid: str) -> Synset:
        if wnid in self._cache:
            return self._cache[wnid]
        if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
            raise WordNetError(f"{wnid!r} is not a WordNet noun id (expected 'n' followed by 8 digits)")
        with open(self.data_path, "rb") as handle:
            handle.seek(int(wnid[1:]))
            line = handle.readline().decode("utf-8", errors="replace")
        if not line.startswith(wnid[1:] + " "):
            raise WordNetError(f"unknown wnid {wnid!r}: no noun synset at that offset in {self.data_path}")
        synset = _parse_data_line(line)
        self._cache[wnid] = synset
        return synset

    def first_hypernym_name(self, wnid: str) -> str:
        synset = self.synset(wnid)
        if not synset.hypernym_wnids:
            return ""
        return self.synset(synset.hypernym_wnids[0]).lemmas[0]
