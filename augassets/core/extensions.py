"""Three methods beyond the paper, each written as a method plugin (plugins.py) and using only what a
plugin is lent: they would run unchanged from a package of their own. The paper's analyses point at
each of them.

- ``image_retrieval``: retrieval queried with the target images' CLIP image embeddings instead of the
  class prompt, one query per target image, their results interleaved rank by rank. Retrieved images
  then resemble the target's domain, which tests the paper's domain-gap argument directly (§4.5).
- ``mmr_retrieval``: diversity-aware retrieval. Maximal marginal relevance (Carbonell & Goldstein,
  1998) over the prompt's filtered nearest neighbours, so near-copies stop crowding the set (the
  scaling analysis, §4.4, shows deeper neighbours adding ever less).
- ``retrieval_img2img``: a hybrid. The retrieved images are the starting points of img2img at a low
  strength, with the simple prompt, so each becomes several variants. It asks whether generation adds
  anything on top of retrieval.

Each keeps the study's retrieval filters (aesthetic, NSFW, near-duplicates, unreadable files): the
``resources.retrieve`` a plugin is lent applies them.
"""

from __future__ import annotations

import math

import numpy as np

from .plugins import ImageRequest, MethodPlugin, PluginImage, PluginResources

CANDIDATES_PER_IMAGE = 4  # mmr_retrieval: filtered neighbours considered per image kept
MMR_LAMBDA = 0.7  # relevance against diversity: 1 is plain nearest neighbours
HYBRID_STRENGTH = 0.3  # img2img noise level: low keeps the retrieved image's content
HYBRID_VARIANTS = 3  # images made from each retrieved one


def _prompt_query(request: ImageRequest, resources: PluginResources) -> tuple[str, np.ndarray]:
    """The built-in retrieval's query: the no-whitespace simple prompt's CLIP text embedding."""
    return request.cls.prompt_nows, resources.clip_texts([request.cls.prompt_nows])[0]


def _as_images(hits, resources: PluginResources, family: str, prompt: str | None = None) -> list[PluginImage]:
    return [
        PluginImage(
            resources.pool_image(hit),
            prompt=prompt,
            family=family,
            pool_id=int(hit.metadata.get("pool_id", hit.id)),
            caption=hit.metadata.get("caption"),
            similarity=float(hit.similarity),
        )
        for hit in hits
    ]


def _interleaved(lists: list[list]) -> list:
    """Every list's first hit, then every list's second, …, each pool item once."""
    chosen, seen = [], set()
    for rank in range(max(map(len, lists), default=0)):
        for hits in lists:
            if rank < len(hits) and hits[rank].id not in seen:
                seen.add(hits[rank].id)
                chosen.append(hits[rank])
    return chosen


def image_queried(request: ImageRequest, resources: PluginResources) -> list[PluginImage]:
    """One filtered retrieval per target image, the results interleaved until the partition is full.
    Similar target images share neighbours, so each query's depth doubles until enough distinct
    images come back (or one query alone could fill the partition)."""
    if not request.target_images:
        raise ValueError(f"class {request.cls.wnid} has no target images to query with")
    queries = resources.clip_images(request.target_images)
    depth = math.ceil(request.needed / len(queries))
    while True:
        lists = [resources.retrieve(query, depth) for query in queries]
        chosen = _interleaved(lists)
        if len(chosen) >= request.needed or depth >= request.needed:
            break
        depth = min(2 * depth, request.needed)
    resources.log(
        f"image_retrieval[{request.cls.wnid}]: {len(chosen)} distinct images from {len(queries)} queries of depth "
        f"{depth}"
    )
    picked = chosen[: request.needed][request.indices.start : request.indices.stop]
    return _as_images(picked, resources, "target_image_query")


def mmr_order(relevance: np.ndarray, embeddings: np.ndarray, n: int, weight: float = MMR_LAMBDA) -> list[int]:
    """Greedy maximal marginal relevance: each step takes the candidate with the largest
    ``weight · relevance − (1 − weight) · (its highest similarity to those already taken)``; ties go to
    the earlier candidate. Returns up to ``n`` candidate indices in the order taken."""
    taken: list[int] = []
    closest = np.full(len(relevance), -np.inf)
    for _ in range(min(n, len(relevance))):
        redundancy = np.where(np.isfinite(closest), closest, 0.0)
        score = weight * relevance - (1 - weight) * redundancy
        score[taken] = -np.inf
        best = int(np.argmax(score))
        taken.append(best)
        closest = np.maximum(closest, embeddings @ embeddings[best])
    return taken


def diverse(request: ImageRequest, resources: PluginResources) -> list[PluginImage]:
    """MMR over the prompt's ``CANDIDATES_PER_IMAGE`` × n filtered nearest neighbours."""
    prompt, query = _prompt_query(request, resources)
    candidates = resources.retrieve(query, CANDIDATES_PER_IMAGE * request.needed)
    if not candidates:
        return []
    embeddings = resources.pool_embeddings(candidates)
    order = mmr_order(np.array([h.similarity for h in candidates]), embeddings, request.needed)
    picked = [candidates[i] for i in order][request.indices.start : request.indices.stop]
    return _as_images(picked, resources, "mmr", prompt)


def hybrid(request: ImageRequest, resources: PluginResources) -> list[PluginImage]:
    """Image i: retrieved image i mod m through img2img at ``HYBRID_STRENGTH`` with the simple prompt,
    seeded for image i alone; m = needed / ``HYBRID_VARIANTS`` (retrieval's n where the study generates
    3 × n), so each retrieved image starts that many variants."""
    _, query = _prompt_query(request, resources)
    sources = resources.retrieve(query, max(1, math.ceil(request.needed / HYBRID_VARIANTS)))
    if not sources:
        return []
    starts = [sources[i % len(sources)] for i in request.indices]
    seeds = [request.image_seed(i) for i in request.indices]
    made = resources.generate(
        [request.cls.prompt] * len(starts),
        seeds,
        init_images=[resources.pool_image(hit) for hit in starts],
        strength=HYBRID_STRENGTH,
    )
    return [
        PluginImage(image, prompt=request.cls.prompt, family="img2img_from_retrieved", pool_id=hit.id, seed=seed)
        for image, hit, seed in zip(made, starts, seeds)
    ]


EXTENSIONS: tuple[MethodPlugin, ...] = (
    MethodPlugin(
        "image_retrieval",
        "Image-queried retrieval",
        "retrieval",
        "CLIP KNN of each target image's embedding over the pool, results interleaved rank by rank.",
        image_queried,
        resample=False,
    ),
    MethodPlugin(
        "mmr_retrieval",
        "Diverse retrieval (MMR)",
        "retrieval",
        "Maximal marginal relevance over the prompt's filtered nearest neighbours.",
        diverse,
        resample=False,
        settings=(("candidates_per_image", CANDIDATES_PER_IMAGE), ("lambda", MMR_LAMBDA)),
    ),
    MethodPlugin(
        "retrieval_img2img",
        "Retrieval → img2img",
        "hybrid",
        "Retrieved images as img2img starting points at a low strength, with the simple prompt.",
        hybrid,
        chunk=8,
        settings=(("strength", HYBRID_STRENGTH), ("variants", HYBRID_VARIANTS)),
    ),
)
