"""Method plugins: augmentation methods that live in a package of their own.

A package registers a method under the entry-point group ``augassets.methods``, its name the method's
key, its object a ``MethodPlugin``::

    [project.entry-points."augassets.methods"]
    my_method = "my_package.methods:MY_METHOD"

The plugin says how to make a class's images (``make_images``); the platform does the rest, as for
its own methods: the class × method partitions, the NSFW check, resampling into each replicate's set,
fidelity, domain match, duplicates, the classifiers, every table and figure, and the lineage.

The contract of ``make_images(request, resources)``:

- it returns one image (a ``PIL.Image`` or a ``PluginImage`` with what the manifest should record)
  per index of ``request.indices``, in order, or fewer when it has no more to give (a retrieval
  method that ran out): the platform then stops asking and the class counts as short;
- image ``i`` depends only on the class, the seed and ``i`` (``request.image_seed(i)``), so that a run
  killed halfway resumes where it stopped and ends with the same images as an uninterrupted run;
- it uses only the resources it needs: each is loaded the first time a plugin asks for it, once per
  step;
- an exception fails that class's partition only, named with the plugin and the class.

Images the safety checker flags are dropped and counted, and further indices are asked for in their
place. Partitions are made in chunks of ``MethodPlugin.chunk`` images; each finished chunk is
recorded in the staging folder, so a rerun after a kill skips it; the final folder appears whole.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from .files import append_chunk, finished_chunks, save_image_atomic

ENTRY_POINT_GROUP = "augassets.methods"
KEY_PATTERN = re.compile(r"^[a-z0-9_]+$")
REPLACEMENT_ROUNDS = 4  # indices asked for beyond ``needed``: at most this many times ``needed``


class PluginError(RuntimeError):
    """A plugin failed on a class, or broke the contract; the message names the plugin and the class."""


@dataclass(frozen=True)
class ClassInfo:
    """The class a partition is for."""

    wnid: str
    label: int  # the class's index in the study
    name: str  # the lemmas joined by ", "
    lemmas: tuple[str, ...]
    definition: str
    hypernym: str
    prompt: str  # the simple prompt, "A photo of {name}."
    prompt_nows: str  # the simple prompt without whitespace in the name: the built-in retrieval's query


@dataclass(frozen=True)
class ImageRequest:
    """What one call of ``make_images`` is asked for: the images ``indices`` of the class's partition."""

    method: str
    cls: ClassInfo
    target_images: tuple[str, ...]  # the class's target training images (paths), the p % subsample
    needed: int  # how many images the partition should hold
    seed: int  # the study's generation seed
    indices: range

    def image_seed(self, index: int) -> int:
        """A stable 63-bit seed for image ``index`` of this class and method."""
        digest = hashlib.sha256(f"{self.seed}/{self.method}/{self.cls.wnid}/{index}".encode()).digest()
        return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class PluginImage:
    """An image and what the augmentation manifest records beside it (all optional)."""

    image: Image.Image
    prompt: str | None = None
    family: str | None = None  # e.g. the prompt's template family, or what kind of query found it
    pool_id: int | None = None  # a pool image: its id in the KNN index
    caption: str | None = None
    similarity: float | None = None
    seed: int | None = None


class PluginResources(Protocol):
    """What the platform lends a plugin. Each is loaded on first use, once per step."""

    device: str  # "cpu", "cuda", …

    def log(self, line: str) -> None:
        """A progress line in the step's log."""

    def clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized CLIP text embeddings, one row per text."""

    def clip_images(self, paths: Sequence[str]) -> np.ndarray:
        """L2-normalized CLIP image embeddings, one row per image file."""

    def knn_search(self, query: np.ndarray, k: int) -> list:
        """The k nearest pool items to a CLIP embedding (``KnnHit``: id, similarity, metadata), unfiltered."""

    def pool_embeddings(self, hits: list) -> np.ndarray:
        """The pool's CLIP image embeddings of ``hits`` (a local index; a service raises)."""

    def retrieve(self, query: np.ndarray, n: int) -> list:
        """``n`` pool items nearest to ``query`` that pass the study's retrieval filters (aesthetic score,
        NSFW column, near-duplicates, unreadable files), most similar first; fewer when the pool runs out."""

    def pool_image(self, hit) -> Image.Image:
        """A pool item's image, RGB."""

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        init_images: Sequence[Image.Image] | None = None,
        strength: float = 0.5,
    ) -> list[Image.Image]:
        """Stable Diffusion with the study's steps and guidance: one image per prompt and seed, from
        text, or from ``init_images`` at ``strength`` (img2img). NSFW flags are the platform's job."""


@dataclass(frozen=True)
class MethodPlugin:
    """An augmentation method from outside the package (module docstring: the contract)."""

    key: str  # [a-z0-9_]: a partition key, the same as the entry point's name
    label: str  # the row's name in tables and figures
    family: str  # e.g. "retrieval", "prompt", "hybrid"
    description: str
    make_images: Callable[[ImageRequest, PluginResources], Sequence[Image.Image | PluginImage]]
    # True: make 3× the need and draw each replicate's set from it (as generation does); False: every
    # replicate takes the first ``needed`` images (as retrieval does).
    resample: bool = True
    chunk: int = 0  # images per call (0: the whole partition at once); smaller chunks resume finer
    version: str = "1"  # change it when the images change: it is part of the images' code version
    settings: tuple[tuple[str, object], ...] = field(default=())  # recorded in the code version too

    @property
    def signature(self) -> tuple:
        """What the images' code version covers."""
        return (self.key, self.version, self.resample, self.settings)


def discover() -> tuple[dict[str, MethodPlugin], dict[str, str]]:
    """The plugins installed in this environment ({key: plugin}, by key), and the entry points that could
    not be used ({name: why}, one line each)."""
    plugins, problems = {}, {}
    for entry in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        where = f"method plugin {entry.name!r} (entry point {entry.value!r}" + (
            f" of {entry.dist.name})" if entry.dist else ")"
        )
        try:
            plugin = entry.load()
        except Exception as error:  # any failure of a third party's import is reported, not raised
            problems[entry.name] = f"{where} could not be loaded: {type(error).__name__}: {error}"
            continue
        if not isinstance(plugin, MethodPlugin):
            problems[entry.name] = f"{where} is a {type(plugin).__name__}, not an augassets MethodPlugin"
        elif plugin.key != entry.name or not KEY_PATTERN.match(plugin.key):
            problems[entry.name] = f"{where}: its key {plugin.key!r} must equal the entry point's name and be [a-z0-9_]"
        elif plugin.key in plugins:
            problems[entry.name] = f"{where}: another installed plugin registers the key {plugin.key!r}"
        else:
            plugins[plugin.key] = plugin
    return plugins, problems


def _checked(plugin: MethodPlugin, request: ImageRequest, made) -> list[PluginImage]:
    """``made`` as PluginImages, or a PluginError saying how it breaks the contract."""
    if made is None or isinstance(made, (str, bytes, Image.Image)) or not hasattr(made, "__len__"):
        raise PluginError(
            f"method plugin {plugin.key!r} returned {type(made).__name__} for class {request.cls.wnid}; "
            "make_images must return a list of images"
        )
    if len(made) > len(request.indices):
        raise PluginError(
            f"method plugin {plugin.key!r} returned {len(made)} images for class {request.cls.wnid} where "
            f"{len(request.indices)} were asked for"
        )
    images = []
    for position, item in enumerate(made):
        image = item if isinstance(item, PluginImage) else PluginImage(item)
        if not isinstance(image.image, Image.Image):
            raise PluginError(
                f"method plugin {plugin.key!r}: image {request.indices[position]} of class {request.cls.wnid} is a "
                f"{type(image.image).__name__}, not a PIL image"
            )
        images.append(image)
    return images


def make_partition(
    plugin: MethodPlugin,
    request: ImageRequest,
    resources: PluginResources,
    final: Path,
    flags_unsafe: Callable[[list[Image.Image]], list[bool]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[dict], int]:
    """Make ``request.needed`` images of one class with ``plugin`` into ``final`` (``<index>.png``; the
    manifest is the caller's). Returns one record per kept image (index, path, rank and the
    PluginImage's fields) and how many the safety checker flagged."""
    staging = final.with_name(final.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    manifest = staging / "manifest.jsonl"
    done = finished_chunks(manifest)
    size = plugin.chunk or request.needed
    limit = request.needed * (1 + REPLACEMENT_ROUNDS)
    kept: list[dict] = []
    flagged, start, chunk, exhausted = 0, 0, 0, False
    while len(kept) < request.needed and start < limit and not exhausted:
        if chunk in done:  # finished before a kill: replayed from its record
            record = done[chunk]
        else:
            indices = range(start, min(start + size, start + request.needed - len(kept), limit))
            asked = replace(request, indices=indices)
            try:
                made = plugin.make_images(asked, resources)
            except PluginError:
                raise
            except Exception as error:
                raise PluginError(
                    f"method plugin {plugin.key!r} failed on class {request.cls.wnid} ({request.cls.name}), images "
                    f"{indices.start}–{indices.stop - 1}: {type(error).__name__}: {error}"
                ) from error
            images = _checked(plugin, asked, made)
            unsafe = flags_unsafe([i.image for i in images]) if flags_unsafe and images else [False] * len(images)
            rows = []
            for index, image, bad in zip(indices, images, unsafe):
                if bad:
                    continue
                path = staging / f"{index:05d}.png"
                save_image_atomic(image.image.convert("RGB"), path)
                # numpy scalars (a KNN hit's similarity, an id) as Python numbers, for the chunk record
                fields = {k: getattr(v, "item", lambda v=v: v)() for k, v in image.__dict__.items() if k != "image"}
                rows.append({"index": index, "file": path.name, **fields})
            record = {
                "chunk": chunk,
                "asked": len(indices),
                "returned": len(images),
                "flagged": sum(unsafe),
                "images": rows,
            }
            append_chunk(manifest, record)
            if progress:
                progress(f"{request.method}/{request.cls.wnid}: {len(kept) + len(rows)}/{request.needed} images")
        kept += record["images"]
        flagged += record["flagged"]
        exhausted = record["returned"] < record["asked"]
        start += record["asked"]
        chunk += 1
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return [{**r, "rank": rank, "path": str(final / r["file"])} for rank, r in enumerate(kept)], flagged
