"""Fine-tuning Stable Diffusion on a class's images: the loop the personalized methods share
(paper §3.1, "Fine-tuning the diffusion model"), ⑤ fine-tuned conditioning, ⑥ cluster conditioning,
⑧ textual inversion, and ⑦ Imagic-style and ⑨ pseudo-word + DM, which also fine-tune the UNet.
Dagster-free.

Why this module is long: the five methods share one training loop (noise, timesteps, the val loss
that picks candidates, resumption after a kill); each method's part is a short function beside it.

The objective is SD's own: noise is added to a VAE latent of a training image at a random timestep of
the pipeline's noise schedule, and the UNet, conditioned on text-encoder states, predicts it (mean
squared error). What is trained differs per method. ⑤: one conditioning per class — the text
encoder's output for the class, initialized by encoding its no-whitespace simple prompt. ⑥: one such
conditioning per k-means cluster of the class's image embeddings. ⑧: the embedding of a new
pseudo-word, in prompts drawn from the textual-inversion templates. All three keep the diffusion
model frozen. ⑦ and ⑨ train ⑤'s conditionings or ⑧'s pseudo-words of every class together with the
UNet, which all classes share: one run over all classes' images (:func:`finetune_jointly`).

The loop validates after each epoch on the class's val images with fixed (latent, noise, timestep)
draws, so the val loss is a deterministic estimate, and stops when it has not improved for
``patience`` epochs or at ``max_epochs`` (the paper: 40). The learning rate is given for
``reference_batch_size`` and scaled by the square root of the batch-size ratio (the paper's rule).

Every epoch writes its parameters (``epoch_<n>.safetensors``) and a resume state, both atomically. A
run killed mid-epoch resumes from the last finished epoch and ends with the same parameters as an
uninterrupted run: each epoch's shuffling and noise come from a generator seeded by (seed, epoch).
A resume state written for another run (another class, method or setting) is refused, naming both.
At the end only the candidate checkpoints are kept: best train loss, best val loss, and the first
``early_epochs`` epochs (the paper keeps 1–3; Imagic 1–8).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline

from .diffusion import encode_latent_distribution, encode_prompts
from .files import save_safetensors_atomic, write_atomic

log = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"


class FinetuneError(RuntimeError):
    pass


@dataclass(frozen=True)
class FinetuneSpec:
    """How one personalization run trains (see the module docstring)."""

    max_epochs: int = 40
    patience: int = 3  # epochs without a better val loss before stopping
    batch_size: int = 8
    reference_batch_size: int = 8  # the batch size ``lr`` is given for
    lr: float = 1e-3
    val_draws: int = 8  # fixed (latent, noise, timestep) draws per val image
    early_epochs: int = 3  # epochs 1..early_epochs are checkpoint candidates (Imagic: 8)
    seed: int = 0
    # ⑦ Imagic (the paper): the first ``early_epochs`` epochs are the candidates *instead of* the best train
    # and val losses, and the run does not stop before it has them all (``min_epochs``).
    loss_candidates: bool = True
    min_epochs: int = 0

    @property
    def scaled_lr(self) -> float:
        return self.lr * math.sqrt(self.batch_size / self.reference_batch_size)


@dataclass(frozen=True)
class ClassImages:
    """One class's fine-tuning data: its target images (train), its val images, and the model's image size."""

    train: Sequence[str]
    val: Sequence[str]
    image_size: int


@dataclass
class FinetuneResult:
    params: dict[str, torch.Tensor]  # after the last epoch run
    history: list[dict]  # per epoch: epoch, train_loss, val_loss, seconds
    candidates: dict[str, int]  # best_train, best_val, epoch_1 … → epoch number
    folder: Path
    seconds: float
    images_per_second: float
    resumed_from: int = 0  # the last finished epoch found on disk (0: a fresh run)
    stopped_early: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def best_val_epoch(self) -> int:
        """The epoch of the lowest val loss (the first of equals), whether or not it is a candidate."""
        return min(self.history, key=lambda h: (h["val_loss"], h["epoch"]))["epoch"]


class SdObjective:
    """SD's noise-prediction loss on one class's train and val images, with the pipeline's own noise
    schedule (its scheduler's betas and timesteps, as DDPM training used them)."""

    def __init__(
        self,
        pipeline: StableDiffusionPipeline,
        images: ClassImages,
        spec: FinetuneSpec,
        spill: tuple[Path, int] | None = None,
    ):
        """``spill`` = (folder, max_bytes): latents larger than that are memory-mapped from files in
        ``folder`` (``diffusion.encode_latent_distribution``); ``self.spilled`` says whether they were."""
        train_paths, val_paths, image_size = images.train, images.val, images.image_size
        if spill is not None and spill[0].exists():
            shutil.rmtree(spill[0])  # an earlier run's files: encoded again below (the same numbers)
        if not train_paths or not val_paths:
            raise FinetuneError(f"fine-tuning needs train and val images (got {len(train_paths)} and {len(val_paths)})")
        self.unet, self.scale = pipeline.unet, pipeline.vae.config.scaling_factor
        self.noise = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.timesteps = self.noise.config.num_train_timesteps
        self.train_mean, self.train_std = encode_latent_distribution(
            pipeline.vae, train_paths, image_size, spill=None if spill is None else (spill[0] / "train", spill[1])
        )
        self.val_mean, self.val_std = encode_latent_distribution(
            pipeline.vae, val_paths, image_size, spill=None if spill is None else (spill[0] / "val", spill[1])
        )
        self.spilled = spill is not None and (spill[0] / "train" / "latent_mean.npy").is_file()
        self.device = self.unet.device
        draws = torch.Generator().manual_seed(spec.seed * 7919 + 1)  # drawn on the CPU: the same on any device
        index = torch.arange(len(val_paths)).repeat(spec.val_draws)
        shape = (len(index), *self.val_mean.shape[1:])
        self.val_draws = (
            index,
            torch.randn(shape, generator=draws).to(self.device),
            torch.randn(shape, generator=draws).to(self.device),
            torch.randint(0, self.timesteps, (len(index),), generator=draws).to(self.device),
        )

    def loss(self, states: torch.Tensor, mean, std, eps, noise, timesteps, unet=None) -> torch.Tensor:
        latents = (mean + std * eps) * self.scale
        noisy = self.noise.add_noise(latents, noise, timesteps)
        states = states.expand(len(timesteps), -1, -1) if states.shape[0] == 1 else states
        # On CUDA the forward runs in bfloat16 autocast (mixed precision); the loss and the trained tensors stay
        # float32.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            predicted = (unet or self.unet)(noisy, timesteps, encoder_hidden_states=states).sample
        return F.mse_loss(predicted.float(), noise)

    def train_batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple:
        """One batch's latents (as posterior mean, std and the standard-normal draw), noise and
        timesteps; the random draws come from ``generator`` on the CPU, so they do not depend on the device."""
        rows = index.to(self.train_mean.device)
        mean, std = self.train_mean[rows].to(self.device), self.train_std[rows].to(self.device)
        draws = [
            torch.randn(mean.shape, generator=generator),
            torch.randn(mean.shape, generator=generator),
            torch.randint(0, self.timesteps, (len(index),), generator=generator),
        ]
        return (mean, std, *(draw.to(self.device) for draw in draws))

    @property
    def val_count(self) -> int:
        return len(self.val_draws[0])

    @torch.no_grad()
    def val_loss(self, states, unet=None, batch_size: int = 64) -> float:
        """The mean loss over the fixed val draws; ``states`` is one conditioning (1 × 77 × dim), one
        per draw (``val_count`` × 77 × dim), or a function giving a slice of the draws' states (for
        many classes, whose states need not all be held at once)."""
        index, eps, noise, timesteps = self.val_draws
        total = 0.0
        for start in range(0, len(index), batch_size):
            part = slice(start, start + batch_size)
            i = index[part].to(self.val_mean.device)
            batch_states = states(part) if callable(states) else states if states.shape[0] == 1 else states[part]
            total += self.loss(
                batch_states,
                self.val_mean[i].to(self.device),
                self.val_std[i].to(self.device),
                eps[part],
                noise[part],
                timesteps[part],
                unet,
            ).item() * len(i)
        return total / len(index)


def candidate_epochs(history: Sequence[dict], early_epochs: int, loss_candidates: bool = True) -> dict[str, int]:
    """The checkpoints kept for selection: best train loss and best val loss (unless ``loss_candidates``
    is False), and epochs 1..early_epochs."""
    chosen = (
        {
            "best_train": min(history, key=lambda h: (h["train_loss"], h["epoch"]))["epoch"],
            "best_val": min(history, key=lambda h: (h["val_loss"], h["epoch"]))["epoch"],
        }
        if loss_candidates
        else {}
    )
    chosen.update({f"epoch_{e}": e for e in range(1, early_epochs + 1) if e <= len(history)})
    return chosen


def finetune(
    params: dict[str, torch.Tensor],
    batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    val_loss: Callable[[], float],
    n_train: int,
    spec: FinetuneSpec,
    folder: Path,
    signature: dict,
    progress: Callable[[str], None] | None = None,
    lrs: dict[str, float] | None = None,
) -> FinetuneResult:
    """Train ``params`` (leaf tensors) on ``batch_loss(index, generator)`` over ``n_train`` images,
    validating with ``val_loss()`` after each epoch; checkpoints and the resume state live in
    ``folder``. ``signature`` says what this run is; a resume state with another one is refused.
    ``lrs``: a base learning rate per parameter name (default ``spec.lr`` for all), each scaled by the
    batch-size rule."""
    say = progress or log.info
    if spec.max_epochs < spec.min_epochs:
        raise FinetuneError(
            f"the run must train at least {spec.min_epochs} epochs (its candidates are epochs 1–{spec.min_epochs}) "
            f"but may train only {spec.max_epochs}: raise max_epochs"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for tensor in params.values():
        tensor.requires_grad_(True)
    scale = spec.scaled_lr / spec.lr
    by_lr: dict[float, list[torch.Tensor]] = {}
    for name, tensor in params.items():
        by_lr.setdefault((lrs or {}).get(name, spec.lr), []).append(tensor)
    optimizer = torch.optim.AdamW(
        [{"params": group, "lr": lr * scale} for lr, group in by_lr.items()], weight_decay=0.0
    )
    history, start_epoch = [], 1
    resume = folder / RESUME_FILE
    if resume.exists():
        state = torch.load(resume, weights_only=True)
        written = json.loads(state["signature"])
        if written != json.loads(json.dumps(signature)):  # compared as stored (tuples become lists)
            raise FinetuneError(
                f"refusing to resume from {resume}: it was written for {written}, this run is {signature}; "
                "delete the folder to start this run over"
            )
        with torch.no_grad():
            for name, tensor in params.items():
                tensor.copy_(state["params"][name])
        optimizer.load_state_dict(state["optimizer"])
        history = json.loads(state["history"])
        start_epoch = len(history) + 1
        say(f"resuming after epoch {len(history)} from {resume}")
    else:  # a fresh run: checkpoints of an earlier, finished run in this folder are not this run's
        for stale in folder.glob("epoch_*.safetensors"):
            stale.unlink()
    resumed_from, seen, started = start_epoch - 1, 0, time.perf_counter()
    best_val_epoch = min(history, key=lambda h: (h["val_loss"], h["epoch"]))["epoch"] if history else 0
    for epoch in range(start_epoch, spec.max_epochs + 1):
        if history and epoch - 1 - best_val_epoch >= spec.patience and epoch - 1 >= spec.min_epochs:
            break
        generator = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        order = torch.randperm(n_train, generator=generator)
        epoch_started, total, steps = time.perf_counter(), 0.0, 0
        for start in range(0, n_train, spec.batch_size):
            loss = batch_loss(order[start : start + spec.batch_size], generator)
            steps += 1
            if not torch.isfinite(loss):
                kept = (
                    f"the last good checkpoint is epoch {epoch - 1} in {folder}" if epoch > 1 else "no epoch finished"
                )
                raise FinetuneError(
                    f"the loss became {loss.item()} at step {steps} of epoch {epoch}; {kept} (lower the learning rate)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            seen += len(order[start : start + spec.batch_size])
        validation = val_loss()
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / steps,
                "val_loss": validation,
                "seconds": time.perf_counter() - epoch_started,
            }
        )
        earlier = [h["val_loss"] for h in history[:-1]]
        if not earlier or validation < min(earlier):
            best_val_epoch = epoch
        snapshot = {name: tensor.detach().clone().contiguous() for name, tensor in params.items()}
        save_safetensors_atomic(snapshot, folder / f"epoch_{epoch:03d}.safetensors")
        state = {
            "params": snapshot,
            "optimizer": optimizer.state_dict(),
            "history": json.dumps(history),
            "signature": json.dumps(signature),
        }
        write_atomic(resume, lambda handle, s=state: torch.save(s, handle))
        say(
            f"epoch {epoch}/{spec.max_epochs}: train loss {total / steps:.5f}, val loss {validation:.5f} (best "
            f"val @ {best_val_epoch})"
        )
    stopped_early = len(history) < spec.max_epochs
    candidates = candidate_epochs(history, spec.early_epochs, spec.loss_candidates)
    for path in folder.glob("epoch_*.safetensors"):
        if int(path.stem.removeprefix("epoch_")) not in candidates.values():
            path.unlink()
    seconds = time.perf_counter() - started
    return FinetuneResult(
        params={name: tensor.detach() for name, tensor in params.items()},
        history=history,
        candidates=candidates,
        folder=folder,
        seconds=seconds,
        images_per_second=seen / seconds if seconds else 0.0,
        resumed_from=resumed_from,
        stopped_early=stopped_early,
    )


def finetune_conditioning(
    pipeline: StableDiffusionPipeline,
    prompt: str,
    images: ClassImages,
    spec: FinetuneSpec,
    folder: Path,
    signature: dict,
    initial: torch.Tensor | None = None,
    progress: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """⑤: one conditioning (the text encoder's output, 1 × 77 × dim) optimized with the diffusion
    model frozen, initialized by encoding ``prompt`` (the class's no-whitespace simple prompt)."""
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.requires_grad_(False)
    objective = SdObjective(pipeline, images, spec)
    start = encode_prompts(pipeline.text_encoder, pipeline.tokenizer, [prompt]) if initial is None else initial
    params = {"prompt_embeds": start.detach().clone()}
    result = finetune(
        params,
        lambda index, generator: objective.loss(params["prompt_embeds"], *objective.train_batch(index, generator)),
        lambda: objective.val_loss(params["prompt_embeds"]),
        len(images.train),
        spec,
        folder,
        signature,
        progress,
    )
    result.extra["initial_val_loss"] = objective.val_loss(start)
    return result


def pseudo_word(tokenizer, wnid: str, say: Callable[[str], None] = log.info) -> str:
    """The class's new token, ``<wnid>``; if the tokenizer already has it, ``<wnid-1>``, ``<wnid-2>`` …"""
    word, n = f"<{wnid}>", 0
    while word in tokenizer.get_vocab():
        n += 1
        word = f"<{wnid}-{n}>"
    if n:
        say(f"pseudo-word <{wnid}> is already a token of the tokenizer: using {word}")
    return word


def initial_word_embedding(pipeline: StableDiffusionPipeline, lemma: str) -> torch.Tensor:
    """Textual inversion's initialization: the embedding of the final word of the class's first lemma
    ("tiger shark" → "shark"), the mean of its tokens' embeddings where it is several (1 × dim)."""
    word = lemma.replace("_", " ").split()[-1]
    ids = pipeline.tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise FinetuneError(f"lemma {lemma!r}: its final word {word!r} has no tokens to initialize a pseudo-word from")
    weight = pipeline.text_encoder.get_input_embeddings().weight.detach()
    return weight[ids].mean(0, keepdim=True).clone()


class WordEncoder:
    """The pipeline's text encoder with new tokens, ``words`` (one pseudo-word, or one per class),
    whose embedding rows are passed per call (trained, or loaded from checkpoints). The words are added
    to a copy of the tokenizer and the encoder runs with its embedding matrix plus those rows
    (``torch.func.functional_call``), so the pipeline's own tokenizer and text encoder are left as they are."""

    def __init__(self, pipeline: StableDiffusionPipeline, words: str | Sequence[str]):
        import copy

        words = [words] if isinstance(words, str) else list(words)
        self.text_encoder, self.words = pipeline.text_encoder, words
        self.tokenizer = copy.deepcopy(pipeline.tokenizer)
        self.tokenizer.add_tokens(words)
        embedding = self.text_encoder.get_input_embeddings().weight
        self.name = next(
            n for n, tensor in self.text_encoder.named_parameters() if tensor is embedding
        )  # its name differs across versions
        self.weight = embedding.detach()
        for offset, word in enumerate(words):
            if self.tokenizer.convert_tokens_to_ids(word) != len(self.weight) + offset:
                raise FinetuneError(
                    f"pseudo-word {word}: the tokenizer gave it id {self.tokenizer.convert_tokens_to_ids(word)}, "
                    f"expected {len(self.weight) + offset} after the text encoder's {len(self.weight)} rows"
                )

    def __call__(self, prompts: Sequence[str], rows: torch.Tensor) -> torch.Tensor:
        """Text-encoder states (len(prompts) × 77 × dim) of ``prompts`` with the words' embeddings
        ``rows`` (len(words) × dim, in the order the words were given)."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.weight.device)
        extended = torch.cat([self.weight, rows.to(self.weight.device, self.weight.dtype)])
        return torch.func.functional_call(self.text_encoder, {self.name: extended}, (ids,))[0]


def finetune_textual_inversion(
    pipeline: StableDiffusionPipeline,
    wnid: str,
    lemma: str,
    templates: Sequence[str],
    images: ClassImages,
    spec: FinetuneSpec,
    folder: Path,
    signature: dict,
    progress: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """⑧: a new pseudo-word for the class whose embedding row alone is trained, with prompts drawn
    from the textual-inversion templates; the diffusion model and every other embedding frozen.

    The tokenizer and text encoder of ``pipeline`` are left as they are (:class:`WordEncoder`).
    Checkpoints hold ``{word: embedding (1 × dim)}``, the format
    diffusers' ``load_textual_inversion`` reads."""
    say = progress or log.info
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.requires_grad_(False)
    objective = SdObjective(pipeline, images, spec)
    word = pseudo_word(pipeline.tokenizer, wnid, say)
    encoder = WordEncoder(pipeline, word)
    initial = initial_word_embedding(pipeline, lemma)
    params = {word: initial.clone()}

    def encode(prompts: list[str]) -> torch.Tensor:
        return encoder(prompts, params[word])

    def prompts_for(count: int, generator: torch.Generator) -> list[str]:
        return [templates[int(i)].format(word) for i in torch.randint(len(templates), (count,), generator=generator)]

    val_prompts = prompts_for(objective.val_count, torch.Generator().manual_seed(spec.seed * 7919 + 2))

    def batch_loss(index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        states = encode(prompts_for(len(index), generator))
        return objective.loss(states, *objective.train_batch(index, generator))

    def val_loss() -> float:
        with torch.no_grad():
            return objective.val_loss(encode(val_prompts))

    result = finetune(
        params, batch_loss, val_loss, len(images.train), spec, folder, {**signature, "word": word}, progress
    )
    result.extra.update(word=word, initial=initial)
    return result


def cluster_images(
    embeddings: np.ndarray, k: int, seed: int, say: Callable[[str], None] = log.info
) -> tuple[np.ndarray, np.ndarray]:
    """⑥'s clusters: k-means (faiss, seeded) over a class's training-image embeddings, as (label per
    image, centroids). A class with fewer images than ``k`` gets as many clusters as it has images, and
    the run says so."""
    import faiss

    n = len(embeddings)
    if n == 0:
        raise FinetuneError("cluster conditioning needs at least one training image")
    if n < k:
        say(f"only {n} training images for k={k} clusters: using {n} clusters")
        k = n
    data = np.ascontiguousarray(embeddings, dtype=np.float32)
    if k == 1:
        return np.zeros(n, dtype=np.int64), data.mean(0, keepdims=True)
    kmeans = faiss.Kmeans(
        data.shape[1], k, niter=25, seed=seed, min_points_per_centroid=1, max_points_per_centroid=1_000_000
    )
    kmeans.train(data)
    _, labels = kmeans.index.search(data, 1)
    return labels[:, 0].astype(np.int64), kmeans.centroids


def nearest_cluster(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The cluster of each embedding (by squared distance to the centroids)."""
    distances = ((embeddings[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1)


def draw_clusters(sizes: Sequence[int], count: int) -> list[int]:
    """Which cluster each of ``count`` generated images comes from: in proportion to the clusters'
    sizes (largest remainders get the rounding), in cluster order."""
    total = sum(sizes)
    shares = [count * size / total for size in sizes]
    counts = [int(share) for share in shares]
    for i in sorted(range(len(sizes)), key=lambda i: (counts[i] - shares[i], i))[: count - sum(counts)]:
        counts[i] += 1
    return [cluster for cluster, n in enumerate(counts) for _ in range(n)]


def finetune_cluster_conditionings(
    pipeline: StableDiffusionPipeline,
    prompt: str,
    images: ClassImages,
    train_embeddings: np.ndarray,
    val_embeddings: np.ndarray,
    k: int,
    spec: FinetuneSpec,
    folder: Path,
    signature: dict,
    progress: Callable[[str], None] | None = None,
) -> list[FinetuneResult]:
    """⑥: the class's training images clustered by k-means on their embeddings; one conditioning per
    cluster, initialized like ⑤ and trained on that cluster's images (validated on the val images
    nearest its centroid, or on all of them when none is). Results in cluster order, each with its
    ``size`` (training images) in ``extra``; generation draws clusters with :func:`draw_clusters`."""
    say = progress or log.info
    labels, centroids = cluster_images(train_embeddings, k, spec.seed, say)
    val_labels = nearest_cluster(np.asarray(val_embeddings, dtype=np.float32), centroids)
    results = []
    for cluster in range(len(centroids)):
        train = [p for p, label in zip(images.train, labels) if label == cluster]
        val = [p for p, label in zip(images.val, val_labels) if label == cluster]
        if not val:
            say(f"cluster {cluster}: no val image is nearest its centroid; validating on all {len(images.val)}")
            val = list(images.val)
        say(f"cluster {cluster}: {len(train)} training images, {len(val)} val images")
        result = finetune_conditioning(
            pipeline,
            prompt,
            ClassImages(train, val, images.image_size),
            spec,
            folder / f"cluster_{cluster}",
            {**signature, "cluster": cluster, "of": len(centroids)},
            progress=lambda line, c=cluster: say(f"cluster {c}: {line}"),
        )
        result.extra["size"] = len(train)
        results.append(result)
    return results


@dataclass(frozen=True)
class JointClass:
    """One class in a jointly fine-tuned model (⑦ ⑨): its key, the prompt its conditioning starts from
    (⑦), the lemma its pseudo-word starts from (⑨), and its images."""

    wnid: str
    prompt: str
    lemma: str
    images: ClassImages


UNET_PREFIX = "unet."


def finetune_jointly(
    pipeline: StableDiffusionPipeline,
    classes: Sequence[JointClass],
    spec: FinetuneSpec,
    unet_lr: float,
    folder: Path,
    signature: dict,
    templates: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    latents_max_bytes: int = 0,
) -> FinetuneResult:
    """⑦ (``templates`` None): one conditioning per class and the UNet, fine-tuned jointly; ⑨
    (``templates`` given): one pseudo-word per class, in prompts drawn from ``templates``, and the UNet.
    One run over every class's images (the UNet is shared; each image is conditioned on its own class's
    conditioning or word); the VAE and text encoder stay frozen. The UNet trains at ``unet_lr``, the
    per-class tensors at ``spec.lr`` (both scaled by the batch-size rule).

    Checkpoints (``epoch_<n>.safetensors``) hold every trained tensor; :func:`export_joint_checkpoints`
    turns the kept ones into the formats users load. ``latents_max_bytes`` (0: no limit): every class's
    VAE latents above that size are memory-mapped from ``folder/latents`` for the run and deleted after
    it (``result.extra["latents"]``: ``memory`` or ``disk``); the numbers are the same either way."""
    say = progress or log.info
    pipeline.vae.requires_grad_(False)
    pipeline.text_encoder.requires_grad_(False)
    if not classes:
        raise FinetuneError("joint fine-tuning needs at least one class")
    train = [path for c in classes for path in c.images.train]
    val = [path for c in classes for path in c.images.val]
    train_class = torch.tensor([i for i, c in enumerate(classes) for _ in c.images.train])
    val_class = torch.tensor([i for i, c in enumerate(classes) for _ in c.images.val])
    spill = (folder / "latents", latents_max_bytes) if latents_max_bytes else None
    objective = SdObjective(pipeline, ClassImages(train, val, classes[0].images.image_size), spec, spill)
    if objective.spilled:
        say(
            f"latents of {len(train) + len(val)} images memory-mapped from {spill[0]} "
            f"(over {latents_max_bytes:,} bytes)"
        )
    val_draw_class = val_class[objective.val_draws[0]]
    params: dict[str, torch.Tensor] = {}
    if templates is None:
        names = [f"conditioning.{c.wnid}" for c in classes]
        for name, c in zip(names, classes):
            params[name] = encode_prompts(pipeline.text_encoder, pipeline.tokenizer, [c.prompt]).detach().clone()

        def states_of(class_index: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
            return torch.cat([params[names[int(i)]] for i in class_index])
    else:
        words = [pseudo_word(pipeline.tokenizer, c.wnid, say) for c in classes]
        encoder = WordEncoder(pipeline, words)
        for word, c in zip(words, classes):
            params[word] = initial_word_embedding(pipeline, c.lemma)
        val_generator = torch.Generator().manual_seed(spec.seed * 7919 + 2)
        val_templates = torch.randint(len(templates), (objective.val_count,), generator=val_generator)

        def states_of(
            class_index: torch.Tensor, generator: torch.Generator | None, chosen: torch.Tensor | None = None
        ) -> torch.Tensor:
            picks = (
                torch.randint(len(templates), (len(class_index),), generator=generator) if chosen is None else chosen
            )
            prompts = [templates[int(t)].format(words[int(i)]) for t, i in zip(picks, class_index)]
            return encoder(prompts, torch.cat([params[w] for w in words]))

    for name, tensor in pipeline.unet.named_parameters():
        params[UNET_PREFIX + name] = tensor
    lrs = {name: (unet_lr if name.startswith(UNET_PREFIX) else spec.lr) for name in params}
    pipeline.unet.train()

    def batch_loss(index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return objective.loss(states_of(train_class[index], generator), *objective.train_batch(index, generator))

    def val_loss() -> float:
        pipeline.unet.eval()
        try:
            with torch.no_grad():
                if templates is None:
                    return objective.val_loss(lambda part: states_of(val_draw_class[part], None))
                return objective.val_loss(lambda part: states_of(val_draw_class[part], None, val_templates[part]))
        finally:
            pipeline.unet.train()

    try:
        result = finetune(params, batch_loss, val_loss, len(train), spec, folder, signature, progress, lrs=lrs)
    finally:
        if spill is not None and spill[0].exists():
            shutil.rmtree(spill[0], ignore_errors=True)
    result.extra["latents"] = "disk" if objective.spilled else "memory"
    pipeline.unet.eval()
    result.extra["words"] = dict(zip([c.wnid for c in classes], words)) if templates is not None else {}
    return result


def export_joint_checkpoints(
    result: FinetuneResult, pipeline: StableDiffusionPipeline, wnids: Sequence[str]
) -> dict[int, Path]:
    """Each kept epoch of a joint run as ``epoch_<n>/``: ``unet/`` (``save_pretrained``, loadable with
    ``UNet2DConditionModel.from_pretrained``) and per class ``<wnid>.safetensors`` — ⑦: its conditioning
    (``prompt_embeds``, 1 × 77 × dim), ⑨: ``{word: embedding}`` as diffusers' ``load_textual_inversion``
    reads it. Written atomically; the combined epoch files and folders of epochs no longer kept go."""
    from safetensors.torch import load_file

    from .files import atomic_folder

    words = result.extra.get("words", {})
    exported = {}
    for epoch in sorted(set(result.candidates.values())):
        combined, final = result.folder / f"epoch_{epoch:03d}.safetensors", result.folder / f"epoch_{epoch:03d}"
        if not combined.exists() and final.is_dir():  # exported by an earlier, interrupted call
            exported[epoch] = final
            continue
        tensors = load_file(combined)
        unet_state = {name.removeprefix(UNET_PREFIX): t for name, t in tensors.items() if name.startswith(UNET_PREFIX)}
        with atomic_folder(final) as tmp:
            pipeline.unet.load_state_dict(unet_state)
            pipeline.unet.save_pretrained(tmp / "unet")
            for wnid in wnids:
                own = (
                    {words[wnid]: tensors[words[wnid]]} if words else {"prompt_embeds": tensors[f"conditioning.{wnid}"]}
                )
                save_safetensors_atomic({k: v.contiguous() for k, v in own.items()}, tmp / f"{wnid}.safetensors")
        combined.unlink()
        exported[epoch] = final
    for stale in result.folder.iterdir():  # an earlier run's epochs (and a killed export's leftovers)
        match = re.fullmatch(r"epoch_(\d+)(\.tmp|\.old)?", stale.name)
        if stale.is_dir() and match and (match.group(2) or int(match.group(1)) not in exported):
            shutil.rmtree(stale)
    return exported
