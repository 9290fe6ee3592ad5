"""All pairs of pHash codes closer than a Hamming threshold (the paper: < 10 of 64 bits).

The search runs on faiss's exhaustive binary index (``IndexBinaryFlat.range_search``: XOR + popcount
over packed codes, SIMD and multithreaded), the database side indexed once and queried in blocks so
the result lists stay bounded. A plain loop over ``imagehash`` differences is ~10⁴× slower
(benchmarks/run.py measures both).
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

PAPER_THRESHOLD = 10  # pairs with Hamming distance < 10 are near-duplicates


class DuplicateIndex:
    """Reference hashes (e.g. test + val + unused train), indexed once, queried many times.
    ``database``: (n, bytes) uint8 codes (core.phash)."""

    def __init__(self, database: np.ndarray):
        if database.ndim != 2 or database.dtype != np.uint8:
            raise TypeError(
                f"pHash codes must be a (n, bytes) uint8 array, not {database.dtype} of shape {database.shape}"
            )
        self.size = len(database)
        self.index = faiss.IndexBinaryFlat(8 * database.shape[1])
        if self.size:
            self.index.add(np.ascontiguousarray(database))

    def pairs(
        self,
        queries: np.ndarray,
        threshold: int = PAPER_THRESHOLD,
        block: int = 65_536,
        progress: Callable[[str], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query index, database index, distance) with Hamming distance < ``threshold``."""
        found_q, found_d, found_dist = [], [], []
        for start in range(0, len(queries), block):
            chunk = np.ascontiguousarray(queries[start : start + block])
            if not len(chunk) or not self.size:
                continue
            limits, distances, ids = self.index.range_search(chunk, threshold)
            counts = np.diff(limits.astype(np.int64))
            found_q.append(np.repeat(np.arange(start, start + len(chunk)), counts))
            found_d.append(ids.astype(np.int64))
            found_dist.append(distances.astype(np.int64))
            if progress:
                progress(
                    f"duplicate search: {min(start + block, len(queries))}/{len(queries)} queries, "
                    f"{int(limits[-1])} pairs"
                )
        if not found_q:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        return np.concatenate(found_q), np.concatenate(found_d), np.concatenate(found_dist)


def duplicate_pairs(
    queries: np.ndarray,
    database: np.ndarray,
    threshold: int = PAPER_THRESHOLD,
    block: int = 65_536,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query index, database index, distance) with Hamming distance < ``threshold``;
    ``queries`` and ``database`` are (n, bytes) uint8 pHash codes."""
    return DuplicateIndex(database).pairs(queries, threshold, block, progress)


def detector_curve(
    found: set[tuple[object, object, int]], planted: set[tuple[object, object]], thresholds: range
) -> list[dict]:
    """Precision and recall of "Hamming distance < t" for each t, against planted ground truth.

    ``found``: every (query, reference, distance) pair below the largest threshold; ``planted``: the
    (query, reference) pairs that truly are duplicates. A planted pair counts as recalled when it is
    found with its own source; precision is the share of found pairs that are planted."""
    curve = []
    for t in thresholds:
        pairs = {(q, r) for q, r, distance in found if distance < t}
        hit = len(pairs & planted)
        curve.append(
            {
                "threshold": t,
                "pairs": len(pairs),
                "recall": hit / len(planted) if planted else float("nan"),
                "precision": hit / len(pairs) if pairs else float("nan"),
            }
        )
    return curve


def choose_threshold(curve: list[dict], target_recall: float) -> dict:
    """The strictest threshold that still finds ``target_recall`` of the planted duplicates (the most
    precise such point of the curve); the loosest one when none reaches it."""
    reaching = [point for point in curve if point["recall"] >= target_recall]
    return min(reaching, key=lambda p: p["threshold"]) if reaching else max(curve, key=lambda p: p["threshold"])
