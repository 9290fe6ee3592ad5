"""Dagster resources: configuration and expensive handles, defaulted from the active profile."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import numpy as np

from .core.determinism import use_deterministic_kernels
from .core.store import Store, SyncStats
from .core.warehouse import Warehouse
from .profiles import DEVICE_ENV, Profile
from .tags import PARTITION_RANGE_START_TAG, PARTITION_TAG


class WarehouseResource(dg.ConfigurableResource):
    """The study's tables: one Parquet file per partition under ``root`` (a folder or fsspec URL),
    queried with DuckDB. Any number of steps, processes or machines write at once."""

    root: str

    def get(self) -> Warehouse:
        return Warehouse(self.root)


class ImageStoreResource(dg.ConfigurableResource):
    """Where image files (dataset exports, augmentation images, sample grids) and models live.

    ``root`` is a local folder or any fsspec URL (``s3://bucket/augassets``, ``gcs://…``,
    ``memory://…``; credentials come from fsspec's usual environment and config files). A URL store
    keeps a local working copy in ``cache_dir``: stages read and write local paths, ``publish`` uploads
    what a stage finished, ``fetch``/``ensure`` bring back what the working copy lacks (see
    ``augassets.core.store``)."""

    root: str
    cache_dir: str = ""

    def store(self) -> Store:
        return Store(self.root, self.cache_dir)

    def path(self, *parts: str) -> Path:
        return self.store().path(*parts)

    def url(self, *parts: str) -> str:
        return self.store().url(*parts)

    def publish(self, *parts: str) -> SyncStats:
        return self.store().publish(*parts)

    def fetch(self, *parts: str) -> Path:
        return self.store().fetch(*parts)

    def ensure(self, paths, log=None) -> SyncStats:
        """Download the table-listed files the working copy lacks; ``log`` hears how many came back."""
        paths = list(paths)
        store = self.store()
        stats = store.ensure(paths)
        if log and stats.downloaded:
            log(f"image store: fetched {stats.downloaded} of {len(paths)} files from {store.shown}")
        return stats


class ComputeResource(dg.ConfigurableResource):
    """Where training runs: ``device`` (cpu, cuda, cuda:1 …), CPU threads (0: torch's default; a fixed
    count makes CPU results repeatable across machines) and ``deterministic`` kernels. Every asset that
    trains or generates takes this resource, so its setup (threads, kernels) runs in that step.
    GPU-bound assets also sit in the ``gpu`` concurrency pool, sized to the machine's GPUs."""

    device: str = "cpu"
    torch_threads: int = 0
    # Threads of a step over partitions (Profile.partition_threads): fewer than torch_threads when the
    # headless command runs several such steps at once; fixed per step kind, so a partition's numbers do
    # not depend on what ran beside it. 0: torch_threads.
    partition_threads: int = 0
    deterministic: bool = True  # deterministic kernels (see augassets/core/determinism.py)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        import torch

        threads = self.threads_for(context.run.tags if context.run else {})
        if threads:
            torch.set_num_threads(threads)
        if self.deterministic:
            use_deterministic_kernels()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"ComputeResource.device is {self.device!r} (the profile's classifier.device) but no CUDA "
                f"device is visible; "
                f"set {DEVICE_ENV}=cpu to run on the CPU, or make a GPU visible"
            )

    def threads_for(self, run_tags: dict) -> int:
        """The thread count of a run with ``run_tags``: ``partition_threads`` for a run over partitions
        (one partition or a range), else ``torch_threads``."""
        over_partitions = any(tag in run_tags for tag in (PARTITION_TAG, PARTITION_RANGE_START_TAG))
        return (self.partition_threads or self.torch_threads) if over_partitions else self.torch_threads


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _resolve_weights(location: str, setting: str, offline: bool) -> tuple[str, bool]:
    """A local folder, or a hub id (``org/name``) looked up in the Hugging Face cache when offline.
    Returns (what to pass to from_pretrained, local_files_only)."""
    path = Path(location).expanduser()
    if path.exists():
        return str(path), True
    looks_like_path = location.startswith(("/", ".", "~")) or location.count("/") != 1
    if looks_like_path:
        raise FileNotFoundError(
            f"weights folder {location} does not exist (setting {setting}): materialize it or point the setting "
            f"at a folder"
        )
    return location, offline


class DiffusionBackendResource(dg.ConfigurableResource):
    """A Stable Diffusion pipeline: ``weights`` is a ``save_pretrained`` folder or a hub id such as
    ``CompVis/stable-diffusion-v1-4`` (with ``HF_HUB_OFFLINE=1`` or ``offline`` it must be in the local
    Hugging Face cache). ``dtype`` float32/float16/bfloat16; ``scheduler`` ddim or dpm_solver."""

    weights: str
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 16
    scheduler: str = "ddim"
    steps: int = 25
    guidance_scale: float = 7.5
    safety_checker: bool = True
    offline: bool = False
    cache_dir: str = ""  # Hugging Face cache for hub ids ("" = the default, HF_HOME/hub)

    def load(self, kind: str = "txt2img"):
        import torch
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        from .core.diffusion import SCHEDULERS

        source, local_only = _resolve_weights(
            self.weights, "DiffusionBackendResource.weights", self.offline or _offline()
        )
        cls = {"txt2img": StableDiffusionPipeline, "img2img": StableDiffusionImg2ImgPipeline}[kind]
        extra = {} if self.safety_checker else {"safety_checker": None, "requires_safety_checker": False}
        try:
            pipeline = cls.from_pretrained(
                source,
                dtype=getattr(torch, self.dtype),
                local_files_only=local_only,
                cache_dir=self.cache_dir or None,
                **extra,
            )
        except OSError as error:
            raise FileNotFoundError(
                f"cannot load Stable Diffusion weights {self.weights!r} (setting DiffusionBackendResource.weights"
                f"{'; offline: the hub id must be in the local Hugging Face cache' if local_only else ''}): {error}"
            ) from None
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r} (setting DiffusionBackendResource.scheduler)")
        pipeline.scheduler = SCHEDULERS[self.scheduler].from_config(pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline.to(self.device)

    def load_safety_checker(self):
        """The pipeline's own safety checker alone, as ``flags(images) -> list[bool]`` (True: NSFW), for
        images that were not generated: retrieval discards what the checker flags, as the paper did.
        None when ``safety_checker`` is off."""
        if not self.safety_checker:
            return None
        import torch
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        source, local_only = _resolve_weights(
            self.weights, "DiffusionBackendResource.weights", self.offline or _offline()
        )
        options = {"local_files_only": local_only, "cache_dir": self.cache_dir or None}
        try:
            checker = (
                StableDiffusionSafetyChecker.from_pretrained(source, subfolder="safety_checker", **options)
                .to(self.device)
                .eval()
            )
            processor = CLIPImageProcessor.from_pretrained(source, subfolder="feature_extractor", **options)
        except OSError as error:
            raise FileNotFoundError(
                f"cannot load the safety checker of {self.weights!r} (setting DiffusionBackendResource.weights; "
                f"or set DiffusionBackendResource.safety_checker=false to skip it): {error}"
            ) from None

        @torch.no_grad()
        def flags(images) -> list[bool]:
            pixels = processor(images=list(images), return_tensors="pt").pixel_values.to(self.device)
            # The checker blacks out flagged images in place; a list takes images of any size.
            arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
            _, nsfw = checker(clip_input=pixels, images=arrays)
            return [bool(flag) for flag in nsfw]

        return flags


class ClipEncoderResource(dg.ConfigurableResource):
    """A CLIP model + processor (``save_pretrained`` folder or hub id such as
    ``openai/clip-vit-large-patch14``) for text and image embeddings."""

    model: str
    device: str = "cpu"
    offline: bool = False
    cache_dir: str = ""

    def load(self):
        from transformers import CLIPModel, CLIPProcessor

        source, local_only = _resolve_weights(self.model, "ClipEncoderResource.model", self.offline or _offline())
        try:
            options = {"local_files_only": local_only, "cache_dir": self.cache_dir or None}
            model = CLIPModel.from_pretrained(source, **options).to(self.device).eval()
            processor = CLIPProcessor.from_pretrained(source, **options)
        except OSError as error:
            raise FileNotFoundError(
                f"cannot load CLIP {self.model!r} (setting ClipEncoderResource.model): {error}"
            ) from None
        return model, processor

    def tokenizer(self):
        """Just the tokenizer (Stable Diffusion's text encoder shares CLIP's)."""
        from transformers import CLIPTokenizer

        source, local_only = _resolve_weights(self.model, "ClipEncoderResource.model", self.offline or _offline())
        return CLIPTokenizer.from_pretrained(source, local_files_only=local_only, cache_dir=self.cache_dir or None)


class KnnIndexResource(dg.ConfigurableResource):
    """The KNN index of the pool. ``backend="local"``: ``index_folder`` in clip-retrieval's layout
    (``image.index`` + ``metadata/*.parquet``). ``backend="remote"``: a ``clip-retrieval back`` at
    ``url`` serving ``indice_name``, queried with ``timeout_s`` per request, ``retries`` and
    ``deadline_s`` per query (all attempts); once the server stops answering (timeouts, refused
    connections), the step's later queries fail at once, each class counted as failed."""

    backend: str = "local"
    index_folder: str = ""
    url: str = ""
    indice_name: str = ""
    timeout_s: float = 30.0
    retries: int = 3
    deadline_s: float = 120.0

    def get(self):
        from .core.knn import LocalKnnIndex, RemoteKnnIndex

        if self.backend == "local":
            return LocalKnnIndex(self.index_folder)
        if self.backend == "remote":
            if not self.url or not self.indice_name:
                raise ValueError("KnnIndexResource backend 'remote' needs url and indice_name")
            return RemoteKnnIndex(self.url, self.indice_name, self.timeout_s, self.retries, deadline_s=self.deadline_s)
        raise ValueError(f"unknown KNN backend {self.backend!r} (setting KnnIndexResource.backend: local or remote)")


def default_resources(profile: Profile) -> dict[str, dg.ConfigurableResource]:
    """The resources that run ``profile`` on this machine: its home, store, device and weights."""
    store = profile.home / "store"
    models = store / "models"
    # The profile's device, or AUGASSETS_DEVICE (read by get_profile): a cuda profile on a machine without a
    # GPU fails in ComputeResource's setup, naming the setting, rather than training on the CPU unnoticed.
    device = profile.compute_device
    return {
        "warehouse": WarehouseResource(root=profile.tables),
        "image_store": ImageStoreResource(root=profile.store_root, cache_dir=str(store)),
        "compute": ComputeResource(
            device=device, torch_threads=profile.torch_threads, partition_threads=profile.partition_threads
        ),
        "diffusion_backend": DiffusionBackendResource(
            weights=str(models / "stable_diffusion") if profile.world else profile.sd_weights,
            device=device,
            scheduler=profile.world.diffusion.scheduler if profile.world else "ddim",
            steps=profile.world.diffusion.steps if profile.world else 50,
            guidance_scale=profile.world.diffusion.guidance_scale if profile.world else 7.5,
            batch_size=profile.sample_batch_size or (64 if profile.world else 16),
        ),
        "clip_encoder": ClipEncoderResource(
            model=str(models / "clip") if profile.world else profile.clip_weights, device=device
        ),
        "knn_index": KnnIndexResource(
            backend="local" if profile.world or not profile.knn_url else "remote",
            index_folder=str(store / "pool_index") if profile.world else profile.knn_index_folder,
            url=profile.knn_url,
            indice_name=profile.knn_indice_name,
        ),
    }
