"""Seeded, batched sampling from a diffusers Stable Diffusion pipeline, and class fidelity."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from ..profiles import ClassifierSpec
from .classifier import build_model, eval_transform


def generate(
    pipeline: StableDiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    guidance_scale: float,
    batch_size: int,
) -> list[tuple[Image.Image, bool]]:
    """One image per (prompt, seed), in order, with the safety checker's verdict. Each image has its
    own generator, so an image depends only on its prompt and seed, not on its batch."""
    results = []
    for start in range(0, len(prompts), batch_size):
        batch_prompts = list(prompts[start : start + batch_size])
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        output = pipeline(
            batch_prompts, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators, output_type="pil"
        )
        flags = output.nsfw_content_detected or [False] * len(output.images)
        results.extend(zip(output.images, (bool(f) for f in flags)))
    return results


@torch.no_grad()
def classify_images(state_dict: dict, spec: ClassifierSpec, num_classes: int, images: Sequence[Image.Image]) -> np.ndarray:
    """Predicted labels of ``images`` under a trained classifier checkpoint (class fidelity)."""
    model = build_model(spec, num_classes)
    model.load_state_dict(state_dict)
    model.eval()
    transform = eval_transform(spec)
    batch = torch.stack(
        [transform(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)) for image in images]
    )
    return model(batch).argmax(1).numpy()
