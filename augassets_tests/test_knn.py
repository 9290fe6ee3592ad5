"""KNN backends: the local faiss folder and a remote clip-retrieval back (a local HTTP server here)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import faiss
import numpy as np
import polars as pl
import pytest

from augassets.core.knn import KnnError, KnnHit, LocalKnnIndex, RemoteKnnIndex, build_index, choose_index_factory
from augassets.core.retrieval import local_image_problem, retrieve
from augassets.resources import KnnIndexResource

from .conftest import write_image


def test_local_index_returns_nearest_first_with_metadata(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    faiss.write_index(build_index([vectors[:30], vectors[30:]], 8, 50), str(tmp_path / "image.index"))
    (tmp_path / "metadata").mkdir()
    pl.DataFrame(
        {"url": [f"file:///img/{i}.png" for i in range(50)], "caption": [f"c{i}" for i in range(50)]}
    ).write_parquet(tmp_path / "metadata" / "metadata_0.parquet")
    index = KnnIndexResource(backend="local", index_folder=str(tmp_path)).get()
    hits = index.search(vectors[7], k=5)
    assert hits[0].id == 7 and hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert hits[0].metadata == {"url": "file:///img/7.png", "caption": "c7"}
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
    brute = np.argsort(-(vectors @ vectors[7]))[:5]
    assert [h.id for h in hits] == brute.tolist()


def test_index_choice_and_missing_folder(tmp_path):
    assert choose_index_factory(10_000) == "Flat"
    assert choose_index_factory(5_000_000).startswith("IVF")
    with pytest.raises(KnnError, match="KnnIndexResource.index_folder"):
        LocalKnnIndex(tmp_path)
    with pytest.raises(ValueError, match="KnnIndexResource.backend"):
        KnnIndexResource(backend="ftp").get()


class FakeClipBack:
    """Answers POST /knn-service in clip-retrieval's JSON; `script` says how to answer each call."""

    def __init__(self, script, results=None):
        self.script = list(script)
        results = results or [
            {"id": 3, "similarity": 0.5, "url": "file:///3.png", "caption": "b"},
            {"id": 9, "similarity": 0.9, "url": "file:///9.png", "caption": "a", "aesthetic": 6.1},
        ]
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                action = outer.script.pop(0) if outer.script else "ok"
                if action == "sleep":
                    time.sleep(1.0)
                if action == "500":
                    self.send_response(500)
                    self.end_headers()
                    return
                payload = b"{not json" if action == "garbage" else json.dumps(results[: body["num_images"]]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except BrokenPipeError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def remote(server, **kwargs):
    options = {"timeout_s": 0.5, "retries": 3, "backoff_s": 0.01, **kwargs}
    return RemoteKnnIndex(server.url, "mini_pool", deduplicate=False, **options)


def test_remote_index_speaks_the_knn_service_protocol():
    with FakeClipBack(["ok"]) as server:
        hits = remote(server).search(np.array([0.6, 0.8], dtype=np.float32), k=2)
    assert [h.id for h in hits] == [9, 3]  # most similar first
    assert hits[0].metadata == {"url": "file:///9.png", "caption": "a", "aesthetic": 6.1}
    path, body = server.requests[0]
    assert path == "/knn-service"
    assert body["modality"] == "image" and body["num_images"] == 2 and body["indice_name"] == "mini_pool"
    assert body["embedding_input"] == pytest.approx([0.6, 0.8])
    assert body["aesthetic_score"] == "" and body["aesthetic_weight"] == ""  # no query shift
    assert body["deduplicate"] is False and body["use_safety_model"] is False


def test_remote_index_retries_server_errors_then_succeeds():
    with FakeClipBack(["500", "garbage", "ok"]) as server:
        hits = remote(server).search_text("A photo of boot.", k=1)
    assert [h.id for h in hits] == [3]
    assert len(server.requests) == 3 and server.requests[0][1]["text"] == "A photo of boot."


@pytest.mark.parametrize(
    "script, message",
    [
        (["500"] * 3, "HTTP 500.*unknown indice_name"),
        (["garbage"] * 3, "malformed response"),
        (["sleep"] * 3, "timed out|TimeoutError"),
    ],
)
def test_remote_index_fails_clearly_after_retries(script, message):
    with FakeClipBack(script) as server:
        with pytest.raises(KnnError, match=f"failed 3 times.*({message})"):
            remote(server).search(np.zeros(2, np.float32), k=1)


def test_remote_index_unreachable():
    with pytest.raises(KnnError, match="KnnIndexResource.url"):
        RemoteKnnIndex("http://127.0.0.1:9", "x", timeout_s=0.2, retries=2, backoff_s=0.01).search(
            np.zeros(2, np.float32), 1
        )


def test_a_hanging_server_costs_one_deadline_then_later_queries_fail_at_once():
    """Each query has a deadline over all its attempts; once the server has stopped answering, the
    next query (the next class) fails at once, without a request, instead of waiting out its own."""
    with FakeClipBack(["sleep"] * 10) as server:
        knn = remote(server, timeout_s=0.3, retries=5, deadline_s=0.7)
        with pytest.raises(
            KnnError,
            match=r"failed [1-4] times in .* \(deadline 0.7 s\), last: .*(timed out|TimeoutError).*deadline_s\)",
        ):
            knn.search(np.zeros(2, np.float32), k=1)
        asked = len(server.requests)
        assert asked < 5, "the deadline, not the retry count, ended the query"
        with pytest.raises(KnnError, match=r"is not answering \(.*\); not asked again"):
            knn.search(np.zeros(2, np.float32), k=1)
        assert len(server.requests) == asked


def test_a_server_error_does_not_stop_later_queries():
    with FakeClipBack(["500"] * 3 + ["ok"]) as server:
        knn = remote(server)
        with pytest.raises(KnnError, match="failed 3 times"):
            knn.search(np.zeros(2, np.float32), k=1)
        assert [h.id for h in knn.search(np.zeros(2, np.float32), k=1)] == [3]


def test_hits_whose_files_are_missing_or_broken_are_dropped_and_counted(tmp_path):
    """A server whose index was built elsewhere answers with files this machine does not have: those
    hits are rejected as ``missing`` (a broken file as ``undecodable``) and retrieval goes on with the rest."""
    good = [write_image(tmp_path / f"good_{i}.png") for i in range(4)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files = [good[0], tmp_path / "gone_1.png", good[1], broken, tmp_path / "gone_2.png", good[2], good[3]]
    results = [
        {"id": i, "similarity": 1.0 - i / 10, "url": path.as_uri(), "caption": f"c{i}", "aesthetic": 6.0}
        for i, path in enumerate(files)
    ]
    with FakeClipBack([], results=results) as server:
        index = remote(server)
        result = retrieve(
            lambda k: index.search(np.ones(2, np.float32), k), None, n=3, image_problem=local_image_problem
        )
    assert [h.id for h in result.kept] == [0, 2, 5]
    assert result.enough and result.rejected["missing"] == 2 and result.rejected["undecodable"] == 1


def test_a_hit_with_a_web_url_names_what_to_do():
    hit = KnnHit(7, 0.9, {"url": "https://example.org/7.jpg"})
    with pytest.raises(ValueError, match=r"pool item 7 has a non-local url .*img2dataset"):
        local_image_problem(hit)


def test_retrieval_through_a_back_that_returns_its_default_columns_keeps_its_hits_and_says_which_filters_it_skipped():
    """clip-retrieval back answers with id, similarity and its columns_to_return (by default url and caption):
    retrieval through it keeps the nearest hits, names the skipped filters and the settings, rejects nothing."""
    from augassets.core.retrieval import retrieve

    results = [
        {"id": i, "similarity": 1.0 - i / 100, "url": f"file:///{i}.png", "caption": f"a photo {i}"} for i in range(30)
    ]
    said = []
    with FakeClipBack([], results=results) as server:
        index = remote(server)
        result = retrieve(
            lambda k: index.search(np.array([0.6, 0.8], dtype=np.float32), k), None, n=10, progress=said.append
        )
    assert result.enough and [h.id for h in result.kept] == list(range(10))
    assert sum(result.rejected.values()) == 0 and set(result.skipped) == {"aesthetic", "nsfw"}
    assert any("retrieval.nsfw_column" in line and "columns_to_return" in line for line in said)
