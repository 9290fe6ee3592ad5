"""KNN search over a CLIP-embedded image pool, behind one interface with two backends.

* ``LocalKnnIndex`` reads clip-retrieval's index layout: a folder with ``image.index`` (faiss, inner
  product over L2-normalized embeddings) and ``metadata/*.parquet`` whose row order is the index order.
* ``RemoteKnnIndex`` speaks the JSON of ``clip-retrieval back``'s ``/knn-service`` endpoint (a POST with
  text / image / embedding_input, modality, num_images, indice_name, deduplicate, use_safety_model,
  aesthetic_score / aesthetic_weight), with a timeout and retries.

Both return hits most-similar first with the pool's metadata. clip-retrieval's own ``aesthetic_score``
shifts the *query* embedding toward pretty images; it does not filter — the paper's "aesthetic ≥ 5" is a
metadata filter, applied by the retrieval stage on the returned ``aesthetic`` column.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import polars as pl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnnHit:
    id: int
    similarity: float
    metadata: dict = field(default_factory=dict)


class KnnError(RuntimeError):
    pass


def choose_index_factory(n_vectors: int) -> str:
    """An autofaiss-style choice: exact search while it is cheap, IVF-PQ past a million vectors."""
    if n_vectors <= 1_000_000:
        return "Flat"
    lists = int(4 * np.sqrt(n_vectors))
    return f"IVF{lists},PQ32"


def embedding_shards(folder: str | Path, kind: str = "img_emb") -> list[Path]:
    """An index folder's ``<kind>/<kind>_<n>.npy`` shards in row order (by n as a number: ``_10`` after ``_9``)."""
    return sorted((Path(folder) / kind).glob(f"{kind}_*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def build_index(embedding_shards: Iterable[np.ndarray], dim: int, n_vectors: int) -> faiss.Index:
    """A faiss inner-product index over L2-normalized embeddings, filled shard by shard."""
    factory = choose_index_factory(n_vectors)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    shards = iter(embedding_shards)
    if not index.is_trained:
        first = next(shards)
        index.train(first)
        index.add(first)
    for shard in shards:
        index.add(np.ascontiguousarray(shard, dtype=np.float32))
    return index


class LocalKnnIndex:
    """A folder in clip-retrieval's layout: ``image.index`` + ``metadata/*.parquet``."""

    def __init__(self, folder: str | Path, modality: str = "image"):
        self.folder = Path(folder)
        index_path = self.folder / f"{modality}.index"
        if not index_path.is_file():
            raise KnnError(
                f"no faiss index at {index_path} (KnnIndexResource.index_folder): materialize pool_index first"
            )
        self.index = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        self.metadata = pl.scan_parquet(sorted((self.folder / "metadata").glob("*.parquet"))).with_row_index("id")
        self._shards: list[np.ndarray] | None = None

    def embeddings(self, ids: list[int]) -> np.ndarray:
        """Stored image embeddings of index ids, read memory-mapped from the ``img_emb`` shards."""
        if self._shards is None:
            paths = embedding_shards(self.folder, "img_emb")
            self._shards = [np.load(p, mmap_mode="r") for p in paths]
            self._offsets = np.cumsum([0] + [len(s) for s in self._shards])
        rows = []
        for i in ids:
            shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
            rows.append(np.asarray(self._shards[shard][i - self._offsets[shard]]))
        return np.stack(rows).astype(np.float32)

    def search(self, embedding: np.ndarray, k: int) -> list[KnnHit]:
        query = np.ascontiguousarray(embedding.reshape(1, -1), dtype=np.float32)
        similarities, ids = self.index.search(query, k)
        found = [(int(i), float(s)) for i, s in zip(ids[0], similarities[0]) if i >= 0]
        if not found:
            return []
        rows = self.metadata.filter(pl.col("id").is_in([i for i, _ in found])).collect()
        by_id = {row["id"]: row for row in rows.iter_rows(named=True)}
        return [KnnHit(i, s, {k: v for k, v in by_id[i].items() if k != "id"}) for i, s in found]


class RemoteKnnIndex:
    """A ``clip-retrieval back`` server: POST ``{url}/knn-service`` with its JSON request."""

    def __init__(
        self,
        url: str,
        indice_name: str,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        deduplicate: bool = True,
        deadline_s: float = 120.0,
    ):
        self.deduplicate = deduplicate  # clip-retrieval's own near-duplicate filter, server side
        self.url = url.rstrip("/")
        self.indice_name = indice_name
        self.timeout_s = timeout_s  # one request
        self.retries = retries
        self.backoff_s = backoff_s
        self.deadline_s = deadline_s  # one query, all its attempts together
        # Why the server stopped answering (timeouts, refused connections): later queries through this
        # object fail at once instead of each waiting out its own deadline, class after class.
        self.down: str | None = None

    def request_body(
        self, k: int, text: str | None = None, embedding: np.ndarray | None = None, use_safety_model: bool = False
    ) -> dict:
        body = {
            "modality": "image",
            "num_images": k,
            "num_result_ids": k,
            "indice_name": self.indice_name,
            "use_mclip": False,
            "deduplicate": self.deduplicate,
            "use_safety_model": use_safety_model,
            "use_violence_detector": False,
            "aesthetic_score": "",  # no query shift: the aesthetic filter is applied on metadata
            "aesthetic_weight": "",
        }
        if embedding is not None:
            body["embedding_input"] = [float(x) for x in np.asarray(embedding).ravel()]
        else:
            body["text"] = text
        return body

    def post(self, body: dict) -> list[dict]:
        settings = "settings KnnIndexResource.url, indice_name, timeout_s, retries, deadline_s"
        if self.down:
            raise KnnError(f"knn-service at {self.url} is not answering ({self.down}); not asked again ({settings})")
        data = json.dumps(body).encode()
        last_error, unreachable, attempt = "", False, 0
        started = time.monotonic()
        while attempt < self.retries:
            remaining = self.deadline_s - (time.monotonic() - started)
            if remaining <= 0:
                break
            attempt += 1
            request = urllib.request.Request(
                f"{self.url}/knn-service", data=data, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=min(self.timeout_s, remaining)) as response:
                    payload = json.loads(response.read().decode())
                if not isinstance(payload, list):
                    raise ValueError(f"expected a JSON list of results, got {type(payload).__name__}")
                return payload
            except urllib.error.HTTPError as error:
                last_error, unreachable = f"HTTP {error.code}", False
                if error.code == 500:
                    last_error += (
                        f" (clip-retrieval answers 500 for an unknown indice_name; is {self.indice_name!r} served?)"
                    )
            except (urllib.error.URLError, TimeoutError, OSError) as error:
                last_error, unreachable = f"{type(error).__name__}: {getattr(error, 'reason', error)}", True
            except ValueError as error:
                last_error, unreachable = f"malformed response: {error}", False
            log.warning(f"knn-service attempt {attempt}/{self.retries} failed: {last_error}")
            if attempt < self.retries:
                time.sleep(min(self.backoff_s * attempt, max(0.0, self.deadline_s - (time.monotonic() - started))))
        if unreachable:
            self.down = last_error
        raise KnnError(
            f"knn-service at {self.url} failed {attempt} times in {time.monotonic() - started:.1f} s (deadline "
            f"{self.deadline_s:g} s), "
            f"last: {last_error} ({settings})"
        )

    def _hits(self, results: list[dict]) -> list[KnnHit]:
        hits = []
        for row in results:
            if not isinstance(row, dict) or "id" not in row or "similarity" not in row:
                raise KnnError(f"knn-service at {self.url} returned a result without id/similarity: {row!r:.200}")
            extra = {key: value for key, value in row.items() if key not in ("id", "similarity")}
            hits.append(KnnHit(int(row["id"]), float(row["similarity"]), extra))
        return sorted(hits, key=lambda hit: -hit.similarity)

    def search(self, embedding: np.ndarray, k: int) -> list[KnnHit]:
        return self._hits(self.post(self.request_body(k, embedding=embedding)))

    def search_text(self, text: str, k: int) -> list[KnnHit]:
        """Let the server embed the query with its own CLIP (the real LAION set-up)."""
        return self._hits(self.post(self.request_body(k, text=text)))
