"""Retrieval's filters and k growth (paper §3.1), on hand-made KNN results."""

import numpy as np

from augassets.core.knn import KnnHit
from augassets.core.retrieval import near_duplicate_rows, retrieve


def pool(n: int, rng) -> tuple[list[KnnHit], np.ndarray]:
    embeddings = rng.normal(size=(n, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    hits = [
        KnnHit(
            i, 1.0 - i / (2 * n), {"aesthetic": 6.0 if i % 3 else 4.0, "nsfw": i % 7 == 0, "url": f"file:///{i}.png"}
        )
        for i in range(n)
    ]
    return hits, embeddings


def test_filters_and_growth():
    rng = np.random.default_rng(0)
    hits, embeddings = pool(400, rng)
    embeddings[5] = embeddings[4]  # a near-duplicate of a kept, more similar item
    searched = []

    def search(k):
        searched.append(k)
        return hits[:k]

    result = retrieve(search, lambda hs: embeddings[[h.id for h in hs]], n=50)
    kept = [h.id for h in result.kept]
    assert result.enough and len(kept) == 50
    assert searched[0] == 70  # k starts at 1.4·n …
    assert result.k_used > 70  # … and grows because a third fail the aesthetic filter
    assert all(i % 3 and i % 7 for i in kept), "aesthetic < 5 and NSFW items are dropped"
    assert 4 in kept and 5 not in kept, "the less similar of two near-duplicates is dropped"
    assert kept == sorted(kept), "most similar first"
    assert retrieve(search, lambda hs: embeddings[[h.id for h in hs]], n=50).kept == result.kept  # deterministic


def test_undecodable_images_are_rejected_and_counted():
    hits, embeddings = pool(100, np.random.default_rng(1))
    result = retrieve(lambda k: hits[:k], None, n=10, image_problem=lambda h: "undecodable" if h.id == 1 else None)
    assert 1 not in [h.id for h in result.kept]
    assert result.rejected["undecodable"] == 1


def test_empty_or_short_knn_result_means_not_enough():
    assert not retrieve(lambda k: [], None, n=5).enough
    hits, _ = pool(12, np.random.default_rng(2))
    calls = []
    result = retrieve(lambda k: (calls.append(k), hits[:k])[1], None, n=10)
    assert not result.enough and len(calls) == 1, "a pool with fewer items than k stops growing"


def test_near_duplicate_components_keep_the_first_member():
    e = np.eye(4, dtype=np.float32)
    chain = np.stack([e[0], e[0], e[1], (e[1] + 0.01 * e[2]) / np.linalg.norm(e[1] + 0.01 * e[2]), e[3]])
    assert near_duplicate_rows(chain) == {1, 3}


def test_safety_checker_rejects_are_counted_apart_from_the_pool_flag_and_checked_once():
    """Paper §3.1: retrieved images pass the diffusion model's safety checker too, not only the pool's flag."""
    hits, embeddings = pool(200, np.random.default_rng(3))
    checked = []

    def flags_unsafe(batch):
        checked.extend(h.id for h in batch)
        return [h.id % 5 == 0 for h in batch]

    result = retrieve(lambda k: hits[:k], lambda hs: embeddings[[h.id for h in hs]], n=60, flags_unsafe=flags_unsafe)
    kept = [h.id for h in result.kept]
    assert result.enough and len(kept) == 60 and not any(i % 5 == 0 for i in kept)
    assert result.rejected["safety_checker"] > 0 and result.rejected["nsfw"] > 0
    assert result.k_used > 84, "k grew past 1.4·n"
    assert len(checked) == len(set(checked)), "an image is checked once however often k grows"
    assert not any(i % 7 == 0 or i % 3 == 0 for i in checked), "only hits that passed the cheaper filters are checked"


def test_the_filters_read_the_named_columns_and_a_column_no_hit_carries_skips_its_filter_in_one_line():
    """A real clip-retrieval back returns only its columns_to_return (url and caption by default): the filters
    must not then reject every hit. LAION names its columns otherwise (``punsafe`` is a probability)."""
    from augassets.core.retrieval import FilterColumns

    bare = [KnnHit(i, 1.0 - i / 100, {"url": f"file:///{i}.png", "caption": "c"}) for i in range(60)]
    said = []
    result = retrieve(lambda k: bare[:k], None, n=20, progress=said.append)
    assert result.enough and [h.id for h in result.kept] == list(range(20)) and result.rejected["aesthetic"] == 0
    assert set(result.skipped) == {"aesthetic", "nsfw"}
    assert (
        "no 'aesthetic' column: the aesthetic filter is skipped (set retrieval.aesthetic_column"
        in result.skipped["aesthetic"]
    )
    assert sum("filter is skipped" in line for line in said) == 2, "each absent column is said once"

    laion = [
        KnnHit(i, 1.0 - i / 100, {"AESTHETIC_SCORE": 6.0 if i % 2 else 4.5, "punsafe": 0.9 if i % 5 == 0 else 0.1})
        for i in range(60)
    ]
    columns = FilterColumns(aesthetic="AESTHETIC_SCORE", nsfw="punsafe", nsfw_threshold=0.5)
    result = retrieve(lambda k: laion[:k], None, n=10, columns=columns)
    assert result.skipped == {} and all(h.id % 2 and h.id % 5 for h in result.kept)
    assert result.rejected["aesthetic"] > 0 and result.rejected["nsfw"] > 0
    # Some hits lacking the column while others carry it is bad metadata, not an absent column: those hits are rejected.
    mixed = [KnnHit(0, 0.9, {"url": "a"}), *laion[1:]]
    assert 0 not in [h.id for h in retrieve(lambda k: mixed[:k], None, n=5, columns=columns).kept]


def test_a_manifest_with_no_rows_has_no_short_partition_instead_of_a_type_error():
    """Retrieval that excluded every class leaves augmentation_manifest without rows: its check then finds
    no short partition (the run ends on augmented_datasets' one line naming the excluded classes), where
    polars' replace_strict over an empty mapping used to raise "cannot compare string with numeric type"."""
    import polars as pl

    from augassets.assets.images import short_partitions

    empty = pl.DataFrame(schema={"method": pl.Utf8, "wnid": pl.Utf8, "len": pl.UInt32})
    assert short_partitions(empty, {}).is_empty()
    counts = pl.DataFrame(
        {"method": ["retrieval", "retrieval", "simple_prompt"], "wnid": ["a", "b", "a"], "len": [3, 6, 2]}
    )
    short = short_partitions(counts, {"retrieval": 6, "simple_prompt": 2})
    assert short.select("method", "wnid").rows() == [("retrieval", "a")]
