"""The mini Stable Diffusion: the same diffusers components as SD v1.4, small enough for a CPU.

``AutoencoderKL`` (32 px RGB → 8×8×4 latents, SD's own trick for cheap diffusion), a
``UNet2DConditionModel`` cross-attending to the mini CLIP's frozen text tower, SD's noise schedule
(scaled-linear betas 0.00085–0.012, 1000 steps, epsilon prediction) with caption dropout for
classifier-free guidance, a DDIM or DPM-Solver sampler, and a ``StableDiffusionSafetyChecker`` whose
concept embedding is the planted NSFW marker in CLIP space. Assembled into a real
``StableDiffusionPipeline`` folder that ``from_pretrained`` loads unchanged.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPImageProcessor, CLIPModel, CLIPTextModel, CLIPTokenizer

from ..profiles import DiffusionSpec
from .files import atomic_folder
from .images import load_rgb

log = logging.getLogger(__name__)

SD_NOISE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
)
SCHEDULERS = {"ddim": DDIMScheduler, "dpm_solver": DPMSolverMultistepScheduler}
# What StableDiffusionPipeline sets on load anyway (with a deprecation warning each time): saved in the
# config instead, as SD v1.4's own scheduler config has them.
SCHEDULER_FIXES = {"ddim": {"steps_offset": 1, "clip_sample": False}, "dpm_solver": {"steps_offset": 1}}
NEVER = 10.0  # a concept weight no cosine similarity reaches: the slot never fires


def pixel_batch(
    paths: Sequence[str], size: int, flip: bool = False, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """Images as a (n, 3, size, size) tensor in [-1, 1], as SD's VAE expects."""
    arrays = []
    for path in paths:
        image = load_rgb(path)
        if image.size != (size, size):
            image = image.resize((size, size))
        array = np.asarray(image, dtype=np.float32)
        if flip and rng.random() < 0.5:
            array = array[:, ::-1]
        arrays.append(array)
    return torch.from_numpy(np.stack(arrays) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def _groups(channels: Sequence[int]) -> int:
    return min(8, min(channels))


def make_vae(spec: DiffusionSpec, image_size: int) -> AutoencoderKL:
    blocks = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(spec.vae_channels),
        layers_per_block=1,
        latent_channels=spec.latent_channels,
        norm_num_groups=_groups(spec.vae_channels),
        sample_size=image_size,
    )


def make_unet(spec: DiffusionSpec, latent_size: int, cross_attention_dim: int) -> UNet2DConditionModel:
    levels = len(spec.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        block_out_channels=tuple(spec.unet_channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=_groups(spec.unet_channels),
    )


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One gradient step on ``loss``; returns its value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@dataclass
class TrainLog:
    losses: list[float]
    seconds: float
    images_per_second: float


def train_vae(
    paths: Sequence[str],
    spec: DiffusionSpec,
    image_size: int,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[AutoencoderKL, TrainLog]:
    """Reconstruction + a small KL term; then SD's ``scaling_factor`` is set to 1/std of the latents."""
    say = progress or log.info
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = make_vae(spec, image_size)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=spec.vae_lr)
    losses, seen, started = [], 0, time.perf_counter()
    steps = max(1, len(paths) // spec.vae_batch_size)
    vae.train()
    for epoch in range(1, spec.vae_epochs + 1):
        order, total = rng.permutation(len(paths)), 0.0
        for step in range(steps):
            batch = pixel_batch(
                [paths[i] for i in order[step * spec.vae_batch_size : (step + 1) * spec.vae_batch_size]],
                image_size,
                flip=True,
                rng=rng,
            )
            posterior = vae.encode(batch).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample
            total += optimizer_step(optimizer, F.mse_loss(reconstruction, batch) + 1e-6 * posterior.kl().mean())
            seen += len(batch)
        losses.append(total / steps)
        say(f"vae epoch {epoch}/{spec.vae_epochs}: loss {losses[-1]:.4f}")
    vae.eval()
    with torch.no_grad():
        sample = pixel_batch([paths[i] for i in rng.permutation(len(paths))[:512]], image_size)
        std = vae.encode(sample).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    seconds = time.perf_counter() - started
    return vae, TrainLog(losses, seconds, seen / seconds)


@torch.no_grad()
def encode_latent_distribution(
    vae: AutoencoderKL,
    paths: Sequence[str],
    image_size: int,
    batch_size: int = 256,
    spill: tuple[Path, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior (mean, std) of every training image, encoded once in batches; training then
    samples latents from it each step instead of re-running the encoder.

    ``spill`` = (folder, max_bytes): when mean and std together would take more than ``max_bytes``
    (full ImageNet's 1.28 M images: about 150 GiB at SD's 4 × 64 × 64 latents), they are written batch
    by batch to ``.npy`` files in ``folder`` and returned memory-mapped (on the CPU), so a batch reads
    only its rows from disk. The values are the same float32 numbers either way, and so is the layout:
    the encoder's output may be channels-last, which decides how later kernels sum, so the files keep
    that order and the returned tensors the same strides."""
    means, stds, mapped, last = [], [], None, False
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            posterior = vae.encode(
                pixel_batch(paths[start : start + batch_size], image_size).to(vae.device, vae.dtype)
            ).latent_dist
            mean, std = posterior.mean.float(), posterior.std.float()
            if start == 0 and spill is not None and 2 * mean[0].numel() * 4 * len(paths) > spill[1]:
                spill[0].mkdir(parents=True, exist_ok=True)
                laid = torch.cat([mean[:1]])  # the layout the in-memory path's torch.cat gives
                last = not laid.is_contiguous() and laid.is_contiguous(memory_format=torch.channels_last)
                shape = (len(paths), *(mean.shape[2:] + mean.shape[1:2] if last else mean.shape[1:]))
                mapped = [
                    np.lib.format.open_memmap(spill[0] / f"latent_{name}.npy", "w+", np.float32, shape)
                    for name in ("mean", "std")
                ]
            if mapped is not None:
                for array, part in zip(mapped, (mean, std)):
                    array[start : start + len(part)] = (part.permute(0, 2, 3, 1) if last else part).cpu().numpy()
            else:
                means.append(mean)
                stds.append(std)
    if mapped is not None:
        for array in mapped:
            array.flush()
        return tuple(
            torch.from_numpy(array).permute(0, 3, 1, 2) if last else torch.from_numpy(array) for array in mapped
        )
    return torch.cat(means), torch.cat(stds)


def text_tower(clip: CLIPModel) -> CLIPTextModel:
    """The CLIP text tower as a standalone ``CLIPTextModel`` (SD's frozen text encoder)."""
    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())
    return encoder.eval()


@torch.no_grad()
def encode_prompts(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompts: Sequence[str]) -> torch.Tensor:
    tokens = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


def train_unet(
    paths: Sequence[str],
    captions: Sequence[str],
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    spec: DiffusionSpec,
    image_size: int,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[UNet2DConditionModel, TrainLog]:
    """SD's training objective: predict the noise added to VAE latents at a random timestep,
    conditioned on the caption's text-encoder states (empty caption with ``caption_dropout``).

    The learning rate warms up over the first 5 % of steps and decays along a cosine; with
    ``unet_ema_decay`` above 0 the returned weights are their exponential moving average (diffusers'
    ``EMAModel`` with its warm-up, so a short run is not held at its initial weights), as SD's
    released checkpoints are."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    say = progress or log.info
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    latent_size = image_size // 2 ** (len(spec.vae_channels) - 1)
    unet = make_unet(spec, latent_size, text_encoder.config.hidden_size)
    noise_scheduler = DDPMScheduler(**SD_NOISE)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=spec.unet_lr, weight_decay=1e-2)
    latent_mean, latent_std = encode_latent_distribution(vae, paths, image_size)
    say(f"unet: {len(paths)} training images encoded to {tuple(latent_mean.shape[1:])} latents")
    losses, seen, started = [], 0, time.perf_counter()
    steps = max(1, len(paths) // spec.unet_batch_size)
    schedule = get_cosine_schedule_with_warmup(
        optimizer, max(1, spec.unet_epochs * steps // 20), spec.unet_epochs * steps
    )
    ema = (
        EMAModel(unet.parameters(), decay=spec.unet_ema_decay, use_ema_warmup=True, power=0.75)
        if spec.unet_ema_decay
        else None
    )
    unet.train()
    for epoch in range(1, spec.unet_epochs + 1):
        order, total = rng.permutation(len(paths)), 0.0
        for step in range(steps):
            index = order[step * spec.unet_batch_size : (step + 1) * spec.unet_batch_size]
            with torch.no_grad():
                latents = latent_mean[index] + latent_std[index] * torch.randn_like(latent_mean[index])
                latents = latents * vae.config.scaling_factor
                prompts = ["" if rng.random() < spec.caption_dropout else captions[i] for i in index]
                states = encode_prompts(text_encoder, tokenizer, prompts)
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),))
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            total += optimizer_step(
                optimizer, F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=states).sample, noise)
            )
            schedule.step()
            if ema is not None:
                ema.step(unet.parameters())
            seen += len(index)
        losses.append(total / steps)
        say(
            f"unet epoch {epoch}/{spec.unet_epochs}: loss {losses[-1]:.4f}, learning rate "
            f"{schedule.get_last_lr()[0]:.2e}"
        )
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.eval()
    seconds = time.perf_counter() - started
    return unet, TrainLog(losses, seconds, seen / seconds)


def make_safety_checker(clip: CLIPModel, concept: np.ndarray, threshold: float) -> StableDiffusionSafetyChecker:
    """SD's safety checker on the mini CLIP's vision tower: concept slot 0 is the NSFW concept
    embedding with ``threshold`` as its cosine weight; the other slots never fire."""
    config = copy.deepcopy(clip.config)
    config._attn_implementation = "eager"  # the checker class does not declare SDPA support
    checker = StableDiffusionSafetyChecker(config)
    checker.vision_model.load_state_dict(clip.vision_model.state_dict())
    checker.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    with torch.no_grad():
        unit = torch.from_numpy(concept / np.linalg.norm(concept)).float()
        checker.concept_embeds.copy_(unit.expand_as(checker.concept_embeds))
        checker.special_care_embeds.copy_(unit.expand_as(checker.special_care_embeds))
        checker.concept_embeds_weights.fill_(NEVER)
        checker.concept_embeds_weights[0] = threshold
        checker.special_care_embeds_weights.fill_(NEVER)
    return checker.eval()


def fit_concept(embeddings: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, float]:
    """A concept embedding and cosine threshold for SD's safety checker, fitted on labelled CLIP image
    embeddings: the concept is Fisher's discriminant direction between flagged and clean images (a
    linear classifier in CLIP space, in the checker's own form), the threshold the one that maximizes
    F1 of ``cos(embedding, concept) > threshold``."""
    flags = flags.astype(bool)
    mean_flagged, mean_clean = embeddings[flags].mean(0), embeddings[~flags].mean(0)
    scatter = np.cov(embeddings.T) + 1e-3 * np.eye(embeddings.shape[1])
    concept = np.linalg.solve(scatter, mean_flagged - mean_clean)
    concept /= np.linalg.norm(concept)
    scores = embeddings @ concept
    best, best_f1 = 1.0, -1.0
    for threshold in np.unique(np.round(scores, 3)):
        predicted = scores > threshold
        tp = float(np.sum(predicted & flags))
        f1 = 2 * tp / max(1.0, float(predicted.sum() + flags.sum()))
        if f1 > best_f1:
            best, best_f1 = float(threshold), f1
    return concept.astype(np.float32), best


@dataclass(frozen=True)
class SafetyFit:
    """The safety checker's NSFW concept and threshold, and how well they find the pool's NSFW markers."""

    concept: np.ndarray
    threshold: float
    precision: float  # on the held-out half of the embeddings
    recall: float


def fit_safety_checker(embeddings: np.ndarray, flags: np.ndarray) -> SafetyFit:
    """``fit_concept`` on the even rows of labelled CLIP image embeddings, scored on the odd rows."""
    rows = np.arange(len(flags))
    fit, held_out = rows % 2 == 0, rows % 2 == 1
    concept, threshold = fit_concept(embeddings[fit], flags[fit])
    predicted = embeddings[held_out] @ concept > threshold
    truth = flags[held_out].astype(bool)
    hits = float((predicted & truth).sum())
    return SafetyFit(concept, threshold, hits / max(1, int(predicted.sum())), hits / max(1, int(truth.sum())))


def assemble_pipeline(
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    safety_checker: StableDiffusionSafetyChecker,
    image_processor: CLIPImageProcessor,
    scheduler: str,
) -> StableDiffusionPipeline:
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r} (DiffusionSpec.scheduler: {', '.join(SCHEDULERS)})")
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=SCHEDULERS[scheduler].from_config(DDPMScheduler(**SD_NOISE).config, **SCHEDULER_FIXES[scheduler]),
        safety_checker=safety_checker,
        feature_extractor=image_processor,
        requires_safety_checker=True,
    )


def save_pipeline(pipeline: StableDiffusionPipeline, folder: Path) -> None:
    """``save_pretrained`` (safetensors) into ``folder``, published atomically."""
    with atomic_folder(folder) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
