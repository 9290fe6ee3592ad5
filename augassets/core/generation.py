"""Seeded, batched, resumable sampling from a diffusers Stable Diffusion pipeline, and class fidelity.

A partition (one class, one method) is generated in fixed chunks of ``batch_size`` images. Image i's
seed depends only on (base seed, method, class, i, attempt), and each image has its own generator, so
an image is the same whatever ran before it. Finished chunks are recorded in the staging folder's
``manifest.jsonl``; a rerun after a kill skips them and regenerates the unfinished chunk exactly. Images
the safety checker flags are regenerated with the next attempt's seed, at most ``max_attempts`` times.
When every chunk is done the staging folder is renamed into place, so the final folder is always whole.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from ..profiles import ClassifierSpec
from .classifier import build_model, eval_transform
from .files import append_chunk, finished_chunks, save_image_atomic


class GenerationError(RuntimeError):
    pass


def image_seed(base_seed: int, method: str, wnid: str, index: int, attempt: int = 0) -> int:
    """A stable 63-bit seed per (method, class, image, attempt)."""
    digest = hashlib.sha256(f"{base_seed}/{method}/{wnid}/{index}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class GenerationRequest:
    """What one partition should contain: prompt ``i`` (and its template family) for image ``i``."""

    method: str
    wnid: str
    prompts: Sequence[str]
    families: Sequence[str]
    base_seed: int = 0
    init_images: Sequence[str] | None = None  # img2img (Boomerang): the image each output starts from
    strength: float = 0.5
    # Personalized methods: image i's text-encoder states (1 × 77 × dim), passed as ``prompt_embeds``;
    # ``prompts`` then only records what each conditioning stands for.
    conditionings: Sequence[torch.Tensor] | None = None


def generate_partition(
    pipeline: StableDiffusionPipeline,
    request: GenerationRequest,
    final: Path,
    steps: int,
    guidance_scale: float,
    batch_size: int,
    max_attempts: int = 5,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Generate ``request`` into ``final`` (``<index>.png`` + ``manifest.parquet`` is the caller's);
    returns one record per image: index, path, prompt, family, seed, attempts (1 = first seed passed)."""
    staging = final.with_name(final.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    manifest = staging / "manifest.jsonl"
    done = {chunk: record["images"] for chunk, record in finished_chunks(manifest).items()}
    n = len(request.prompts)
    for chunk, start in enumerate(range(0, n, batch_size)):
        if chunk in done:
            continue
        indices = list(range(start, min(start + batch_size, n)))
        attempts = {i: 0 for i in indices}
        images: dict[int, Image.Image] = {}
        pending = indices
        while pending:
            seeds = [image_seed(request.base_seed, request.method, request.wnid, i, attempts[i]) for i in pending]
            inits = None
            if request.init_images is not None:
                size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
                inits = [
                    Image.open(request.init_images[i]).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
                    for i in pending
                ]
            states = None if request.conditionings is None else [request.conditionings[i] for i in pending]
            results = generate(
                pipeline,
                [request.prompts[i] for i in pending],
                seeds,
                steps,
                guidance_scale,
                len(pending),
                inits,
                request.strength,
                states,
            )
            flagged = []
            for i, (image, nsfw) in zip(pending, results):
                if nsfw:
                    attempts[i] += 1
                    if attempts[i] >= max_attempts:
                        raise GenerationError(
                            f"{request.method}/{request.wnid}: the safety checker rejected image {i} (prompt "
                            f"{request.prompts[i]!r}) {max_attempts} times; change the prompt or raise max_attempts"
                        )
                    flagged.append(i)
                else:
                    images[i] = image
            pending = flagged
        records = []
        for i in indices:
            path = staging / f"{i:05d}.png"
            save_image_atomic(images[i], path)
            records.append(
                {
                    "index": i,
                    "file": path.name,
                    "prompt": request.prompts[i],
                    "family": request.families[i],
                    "seed": image_seed(request.base_seed, request.method, request.wnid, i, attempts[i]),
                    "attempts": attempts[i] + 1,
                }
            )
        append_chunk(manifest, {"chunk": chunk, "images": records})
        done[chunk] = records
        if progress:
            progress(f"{request.method}/{request.wnid}: {min(start + batch_size, n)}/{n} images")
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    records = [r for chunk in sorted(done) for r in done[chunk]]
    return [{**r, "path": str(final / r["file"])} for r in records]


def generate(
    pipeline: StableDiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    guidance_scale: float,
    batch_size: int,
    init_images: Sequence[Image.Image] | None = None,
    strength: float = 0.5,
    conditionings: Sequence[torch.Tensor] | None = None,
) -> list[tuple[Image.Image, bool]]:
    """One image per (prompt, seed), in order, with the safety checker's verdict. Each image has its
    own generator, so an image depends only on its prompt and seed, not on its batch. With
    ``init_images`` the pipeline is an img2img one: each image is noised to ``strength`` and denoised.
    With ``conditionings`` (one 1 × 77 × dim tensor per image) they are the text-encoder states, in
    place of encoding the prompts (the unconditional half of guidance still encodes "")."""
    results = []
    for start in range(0, len(prompts), batch_size):
        batch = slice(start, start + batch_size)
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[batch]]
        extra = {} if init_images is None else {"image": list(init_images[batch]), "strength": strength}
        if conditionings is None:
            extra["prompt"] = list(prompts[batch])
        else:
            extra["prompt_embeds"] = torch.cat(list(conditionings[batch])).to(pipeline.device, pipeline.unet.dtype)
        output = pipeline(
            num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators, output_type="pil", **extra
        )
        flags = output.nsfw_content_detected or [False] * len(output.images)
        results.extend(zip(output.images, (bool(f) for f in flags)))
    return results


@torch.no_grad()
def classify_images(
    state_dict: dict, spec: ClassifierSpec, num_classes: int, images: Sequence[Image.Image]
) -> np.ndarray:
    """Predicted labels of ``images`` under a trained classifier checkpoint (class fidelity)."""
    model = build_model(spec, num_classes)
    model.load_state_dict(state_dict)
    model.eval()
    transform = eval_transform(spec)
    batch = torch.stack(
        [transform(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)) for image in images]
    )
    return model(batch).argmax(1).numpy()


def classify_paths(
    checkpoints: dict[str, tuple[dict, ClassifierSpec]], num_classes: int, paths: Sequence[str], batch_size: int = 512
) -> dict[str, np.ndarray]:
    """Predicted labels of image files under each named checkpoint (its state dict and the spec it was
    trained with, which sets its architecture and input size): every file is decoded once, in batches,
    whatever the number of checkpoints."""
    predicted = {name: [] for name in checkpoints}
    for start in range(0, len(paths), batch_size):
        images = [Image.open(path).convert("RGB") for path in paths[start : start + batch_size]]
        for name, (state, spec) in checkpoints.items():
            predicted[name].append(classify_images(state, spec, num_classes, images))
    return {name: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64) for name, parts in predicted.items()}
