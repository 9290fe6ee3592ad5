"""A method plugin's images of one class (core/plugins.py holds the contract): the resources the
platform lends a plugin, each loaded the first time a plugin asks for it and kept for the step, and
the partition's folder, manifest and table rows, written as for the built-in methods."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..core.files import file_url_path
from ..core.images import load_rgb
from ..core.methods import get_method
from ..core.plugins import ClassInfo, ImageRequest, make_partition
from ..profiles import Profile
from .manifests import record_partition


class StepResources:
    """``PluginResources`` for one step of ``augmentation_images`` or ``scaling_images``: the study's CLIP
    encoder, KNN index, Stable Diffusion pipelines and safety checker behind the Dagster resources, loaded
    on first use; the profile and image store the step writes with."""

    def __init__(self, profile: Profile, log, image_store, clip_encoder, knn_index, diffusion_backend):
        self.profile, self._log, self.image_store = profile, log, image_store
        self._clip_encoder, self._knn_index, self._backend = clip_encoder, knn_index, diffusion_backend
        self.device = diffusion_backend.device
        self._retrieved: dict[tuple[bytes, int], list] = {}

    def log(self, line: str) -> None:
        self._log.info(line)

    def _fetch(self, *parts: str) -> None:
        if self.profile.world:  # the mini world's models and pool live in the image store
            self.image_store.fetch(*parts)

    @functools.cached_property
    def _clip(self):
        self._fetch("models", "clip")
        return self._clip_encoder.load()

    @functools.cached_property
    def _index(self):
        for parts in (("pool_index",), ("web_pool",)):
            self._fetch(*parts)
        return self._knn_index.get()

    @functools.cached_property
    def safety_flags(self):
        """The diffusion model's safety checker as ``flags(images) -> [nsfw]`` (None when it is off)."""
        self._fetch("models", "stable_diffusion")
        return self._backend.load_safety_checker()

    @functools.cache  # noqa: B019 - one pipeline per kind for the step's lifetime is the point
    def _pipeline(self, kind: str):
        self._fetch("models", "stable_diffusion")
        return self._backend.load(kind)

    def clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        from ..core.clip import encode_texts

        model, processor = self._clip
        return encode_texts(model, processor.tokenizer, list(texts))

    def clip_images(self, paths: Sequence[str]) -> np.ndarray:
        from ..core.clip import encode_image_batches

        model, _ = self._clip
        batches = list(encode_image_batches(model, list(paths), model.config.vision_config.image_size))
        return np.concatenate(batches) if batches else np.zeros((0, model.config.projection_dim), np.float32)

    def knn_search(self, query: np.ndarray, k: int) -> list:
        return self._index.search(query, k)

    def pool_embeddings(self, hits: list) -> np.ndarray:
        if not hasattr(self._index, "embeddings"):
            raise ValueError("the KNN service returns no embeddings: pool_embeddings needs a local index")
        return self._index.embeddings([hit.id for hit in hits])

    def retrieve(self, query: np.ndarray, n: int) -> list:
        from ..core.retrieval import retrieve_from_index

        key = (np.asarray(query, np.float32).tobytes(), n)  # a plugin asking again for its next chunk
        if key not in self._retrieved:
            self._retrieved[key] = retrieve_from_index(
                self.profile.retrieval, self._index, query, n, self.safety_flags, progress=self._log.debug
            ).kept
        return self._retrieved[key]

    def pool_image(self, hit) -> Image.Image:
        return load_rgb(file_url_path(str(hit.metadata["url"])))

    def generate(self, prompts, seeds, init_images=None, strength: float = 0.5) -> list[Image.Image]:
        from ..core.generation import generate

        pipeline = self._pipeline("txt2img" if init_images is None else "img2img")
        if init_images is not None:
            size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
            init_images = [image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC) for image in init_images]
        made = generate(
            pipeline,
            list(prompts),
            list(seeds),
            self._backend.steps,
            self._backend.guidance_scale,
            len(prompts),
            init_images,
            strength,
        )
        return [image for image, _ in made]


def class_info(db, wnid: str) -> ClassInfo:
    from ..core.prompts import simple_prompt, simple_prompt_nows

    row = db.query("SELECT label, name, hypernym, definition FROM class_catalog WHERE wnid = ?", [wnid]).row(
        0, named=True
    )
    return ClassInfo(
        wnid,
        int(row["label"]),
        row["name"],
        tuple(part.strip() for part in row["name"].split(",")),
        row["definition"] or "",
        row["hypernym"] or "",
        simple_prompt(row["name"]),
        simple_prompt_nows(row["name"]),
    )


def plugin_partition(
    resources: StepResources,
    context,
    db,
    method: str,
    wnid: str,
    needed: int,
    folder: str = "images",
    table: str = "augmentation_manifest",
) -> tuple[dict, list[str]]:
    """One class's ``needed`` images from ``method``'s plugin into <folder>/<method>/<wnid>/ with their
    manifest and its rows in ``table`` (scaling_images: its own folder and table, a larger count)."""
    method = get_method(method)
    image_store = resources.image_store
    info = class_info(db, wnid)
    targets = db.query("SELECT path FROM dataset_splits WHERE split = 'target' AND wnid = ? ORDER BY item", [wnid])
    image_store.ensure(targets["path"])
    request = ImageRequest(
        method.key, info, tuple(targets["path"]), needed, resources.profile.generation.seed, range(0)
    )
    final = image_store.path(folder, method.key, wnid)
    records, flagged = make_partition(
        method.plugin,
        request,
        resources,
        final,
        resources.safety_flags,
        progress=lambda line: context.log.debug(f"plugin {line}"),
    )
    rows = [
        {
            "method": method.key,
            "wnid": wnid,
            "rank": r["rank"],
            "path": r["path"],
            **{k: r[k] for k in ("prompt", "family", "seed", "pool_id", "caption", "similarity")},
        }
        for r in records
    ]
    manifest = record_partition(db, image_store, rows, final, method.key, wnid, info.label, folder, table)
    context.log.info(
        f"{context.asset_key.to_user_string()}[{method.key}, {wnid}]: {manifest.height}/{needed} images from plugin "
        f"{method.plugin.key!r} ({flagged} dropped by the safety checker)"
    )
    row = {"wnid": wnid, "method": method.key, "images": manifest.height, "needed": needed, "regenerated": flagged}
    return row, manifest["path"].to_list()
