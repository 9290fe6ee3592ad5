"""Retrieval augmentation (paper §3.1, "retrieval"): the n pool images most similar to a class's
no-whitespace simple prompt that survive the filters.

Filters, in the paper's order: aesthetic score ≥ 5 (the metadata column — clip-retrieval's
``aesthetic_score`` request field shifts the query instead, and is not used), the pool's NSFW flag,
the diffusion model's own safety checker (the paper: "we used the same safety checker model to
discard images that were marked as NSFW"), and near-duplicates among the results (clip-retrieval's rule:
connected components of the inner-product
≥ 0.94 graph over the results, keeping the most similar of each). When fewer than n survive, k grows
from 1.4·n to 10·1.4·n. Deterministic: ties in similarity are broken by pool id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .files import file_url_path
from .images import ImageStatus, inspect_image, load_rgb
from .knn import KnnHit

if TYPE_CHECKING:
    from ..profiles import RetrievalSpec

DEDUP_THRESHOLD = 0.94  # clip-retrieval's deduplication threshold on inner product
K_FACTOR = 1.4
MAX_GROWTH = 10


@dataclass
class RetrievalResult:
    kept: list[KnnHit]  # the n survivors, most similar first
    k_used: int
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count over the final k
    enough: bool = False
    skipped: dict[str, str] = field(default_factory=dict)  # filter -> why it was not applied (its column is absent)


@dataclass(frozen=True)
class FilterColumns:
    """Which metadata columns the filters read (``RetrievalSpec``): an aesthetic score, and an NSFW flag or
    probability (NSFW above ``nsfw_threshold``)."""

    aesthetic: str = "aesthetic"
    nsfw: str = "nsfw"
    nsfw_threshold: float = 0.5


def absent_columns(hits: list[KnnHit], columns: FilterColumns) -> dict[str, str]:
    """The filters whose column no hit carries, each with the one line that says so and what to set."""
    absent = {}
    for name, column, setting in (
        ("aesthetic", columns.aesthetic, "aesthetic_column"),
        ("nsfw", columns.nsfw, "nsfw_column"),
    ):
        if hits and not any(column in hit.metadata for hit in hits):
            absent[name] = (
                f"the KNN results carry no {column!r} column: the {name} filter is skipped (set retrieval.{setting}, "
                "or add the column to the service's columns_to_return)"
            )
    return absent


def near_duplicate_rows(embeddings: np.ndarray, threshold: float = DEDUP_THRESHOLD) -> set[int]:
    """Rows to drop: in each connected component of the graph 'inner product ≥ threshold', every
    member but the first (the most similar to the query, as rows are ordered)."""
    n = len(embeddings)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    similar = embeddings @ embeddings.T >= threshold
    for i, j in zip(*np.nonzero(np.triu(similar, k=1))):
        a, b = find(int(i)), find(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)  # the root is the earliest (most similar) row
    return {i for i in range(n) if find(i) != i}


def retrieve(
    search: Callable[[int], list[KnnHit]],
    embeddings_of: Callable[[list[KnnHit]], np.ndarray] | None,
    n: int,
    min_aesthetic: float = 5.0,
    dedup_threshold: float = DEDUP_THRESHOLD,
    image_problem: Callable[[KnnHit], str | None] | None = None,
    flags_unsafe: Callable[[list[KnnHit]], list[bool]] | None = None,
    progress: Callable[[str], None] | None = None,
    columns: FilterColumns = FilterColumns(),
) -> RetrievalResult:
    """Grow k until n hits pass the filters. ``search(k)`` returns the k nearest pool items with their
    metadata (the ``columns`` the filters read; a column no hit carries skips its filter, said once
    through ``progress`` and in ``skipped``); ``embeddings_of(hits)`` gives their image embeddings for the
    duplicate rule (None: the back end already deduplicated); ``image_problem(hit)`` says why its image
    cannot be used, or None (a missing or undecodable pool image is rejected and counted under its
    reason, like a dead LAION URL);
    ``flags_unsafe(hits)`` runs the safety checker on their images (True: discard). A hit is checked
    once, however often k grows."""
    verdicts: dict[int, bool] = {}
    result = RetrievalResult(kept=[], k_used=0)
    for growth in range(1, MAX_GROWTH + 1):
        k = math.ceil(K_FACTOR * n * growth)
        hits = sorted(search(k), key=lambda h: (-h.similarity, h.id))
        rejected = {"aesthetic": 0, "nsfw": 0, "missing": 0, "undecodable": 0, "safety_checker": 0, "near_duplicate": 0}
        skipped = absent_columns(hits, columns)
        for line in (line for name, line in skipped.items() if name not in result.skipped):
            if progress:
                progress(line)
        candidates = []
        for hit in hits:
            aesthetic = hit.metadata.get(columns.aesthetic)
            if "aesthetic" not in skipped and (aesthetic is None or aesthetic < min_aesthetic):
                rejected["aesthetic"] += 1
            elif "nsfw" not in skipped and float(hit.metadata.get(columns.nsfw) or 0) > columns.nsfw_threshold:
                rejected["nsfw"] += 1
            elif image_problem is not None and (problem := image_problem(hit)) is not None:
                rejected[problem] += 1
            else:
                candidates.append(hit)
        if flags_unsafe is not None and candidates:
            unchecked = [hit for hit in candidates if hit.id not in verdicts]
            if unchecked:
                verdicts.update(zip((hit.id for hit in unchecked), flags_unsafe(unchecked)))
            rejected["safety_checker"] = sum(verdicts[hit.id] for hit in candidates)
            candidates = [hit for hit in candidates if not verdicts[hit.id]]
        if embeddings_of is not None and candidates:
            drop = near_duplicate_rows(embeddings_of(candidates), dedup_threshold)
            rejected["near_duplicate"] = len(drop)
            candidates = [hit for i, hit in enumerate(candidates) if i not in drop]
        result = RetrievalResult(
            kept=candidates[:n], k_used=k, rejected=rejected, enough=len(candidates) >= n, skipped=skipped
        )
        if progress:
            progress(f"k={k}: {len(candidates)} of {len(hits)} survive the filters (need {n})")
        if result.enough or len(hits) < k:  # enough, or the pool has no more items
            break
    return result


def local_image_problem(hit: KnnHit) -> str | None:
    """``image_problem`` for a pool indexed with ``file://`` URLs: ``missing`` when the file is not
    there (an index built on another machine, a moved pool), ``undecodable`` when it does not decode,
    None when it can be used. A non-file URL is an error naming what to do: retrieval reads images
    from disk and does not download them."""
    url = str(hit.metadata.get("url", ""))
    if not url.startswith("file://"):
        raise ValueError(
            f"pool item {hit.id} has a non-local url {url[:80]!r}; download the pool's images first "
            "(e.g. with img2dataset) and index them with file URLs"
        )
    status = inspect_image(file_url_path(url), non_rgb="convert")
    if status.usable:
        return None
    return "missing" if status == ImageStatus.MISSING else "undecodable"


def retrieve_from_index(
    spec: RetrievalSpec,
    index,
    query: np.ndarray,
    n: int,
    safety_flags: Callable[[list], list[bool]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> RetrievalResult:
    """``retrieve`` over a KNN index (``LocalKnnIndex`` or ``RemoteKnnIndex``) for one CLIP embedding,
    with the study's filters (``RetrievalSpec``) and, where given, the diffusion model's safety checker
    (``safety_flags(images) -> [nsfw]``) on the hits' images."""
    local = hasattr(index, "embeddings")
    return retrieve(
        search=lambda k: index.search(query, k),
        embeddings_of=(lambda hits: index.embeddings([h.id for h in hits])) if local else None,
        n=n,
        min_aesthetic=spec.min_aesthetic,
        dedup_threshold=spec.dedup_threshold,
        image_problem=local_image_problem,
        flags_unsafe=(lambda hits: safety_flags([load_rgb(file_url_path(str(h.metadata["url"]))) for h in hits]))
        if safety_flags
        else None,
        progress=progress,
        columns=FilterColumns(spec.aesthetic_column, spec.nsfw_column, spec.nsfw_threshold),
    )
