"""The mini CLIP: the real CLIP tokenizer, a small ``transformers.CLIPModel``, contrastive training on
the web pool, zero-shot evaluation, and batched encoders used by retrieval and the safety checker.

The tokenizer is built from the BPE merges file that ``open_clip_torch`` ships
(``open_clip/bpe_simple_vocab_16e6.txt.gz``), the file OpenAI's CLIP, Stable Diffusion's text encoder
and LAION's index all tokenize with: 256 byte tokens, their 256 end-of-word forms, 48,894 merges and
two specials — 49,408 ids. So the mini CLIP splits text exactly as the real ones do, and a
``clip-retrieval back`` serving the pool with ``hf_clip:<folder>`` tokenizes queries the same way.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from ..profiles import ClipSpec
from .images import load_rgb

log = logging.getLogger(__name__)

VOCAB_SIZE = 49_408
MAX_POSITIONS = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalisation
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def bpe_merges_file() -> Path:
    """The BPE merges file shipped inside the ``open_clip_torch`` wheel."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall open_clip_torch (pip install open_clip_torch)")
    return path


def byte_alphabet() -> list[str]:
    """The first 256 vocabulary entries: GPT-2/CLIP's reversible byte → character map, in CLIP's
    order — printable Latin-1 bytes (standing for themselves) first, then the remaining bytes mapped
    to code points 256, 257, …"""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]


def clip_vocabulary(merges_path: Path | None = None) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (token → id) and merges, derived from the BPE merges file."""
    lines = gzip.open(merges_path or bpe_merges_file()).read().decode("utf-8").split("\n")
    merges = lines[1 : VOCAB_SIZE - 256 * 2 - 2 + 1]  # the first line is a version header
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    return {token: i for i, token in enumerate(tokens)}, merges


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """Write ``vocab.json``/``merges.txt`` into ``folder`` and load them as a ``CLIPTokenizer``
    (``model_max_length=77``: diffusers' ``encode_prompt`` needs it)."""
    vocab, merges = clip_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=MAX_POSITIONS
    )


def build_processor(folder: Path, image_size: int) -> CLIPProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(OPENAI_MEAN),
        image_std=list(OPENAI_STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=build_tokenizer(folder))


def clip_config(spec: ClipSpec, image_size: int) -> CLIPConfig:
    text = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=spec.hidden_size,
        intermediate_size=4 * spec.hidden_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=VOCAB_SIZE - 2,
        eos_token_id=VOCAB_SIZE - 1,
        pad_token_id=VOCAB_SIZE - 1,
    )
    vision = dict(
        image_size=image_size,
        patch_size=spec.patch_size,
        hidden_size=spec.hidden_size,
        intermediate_size=4 * spec.hidden_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec.projection_dim)


def image_tensor(
    paths: Sequence[str], image_size: int, augment: bool = False, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """Decode, resize and normalize a batch the way ``CLIPImageProcessor`` does (fast path for training)."""
    arrays = []
    for path in paths:
        image = load_rgb(path)
        if augment:
            pad = max(1, image_size // 16)
            image = image.resize((image_size + 2 * pad, image_size + 2 * pad), Image.Resampling.BICUBIC)
            x, y = rng.integers(0, 2 * pad + 1, 2)
            image = image.crop((int(x), int(y), int(x) + image_size, int(y) + image_size))
        elif image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


@dataclass
class ClipTrainResult:
    model: CLIPModel
    losses: list[float]
    seconds: float
    pairs_per_second: float


def train_clip(
    paths: Sequence[str],
    captions: Sequence[str],
    tokenizer: CLIPTokenizer,
    spec: ClipSpec,
    image_size: int,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ClipTrainResult:
    """Contrastive (InfoNCE, symmetric) training of a fresh CLIPModel on image–caption pairs."""
    say = progress or log.info
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CLIPModel(clip_config(spec, image_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.1)
    steps_per_epoch = max(1, len(paths) // spec.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch, pct_start=0.1
    )
    losses, started, seen = [], time.perf_counter(), 0
    model.train()
    for epoch in range(1, spec.epochs + 1):
        order = rng.permutation(len(paths))
        epoch_loss = 0.0
        for step in range(steps_per_epoch):
            index = order[step * spec.batch_size : (step + 1) * spec.batch_size]
            pixels = image_tensor([paths[i] for i in index], image_size, augment=True, rng=rng)
            text = tokenizer(
                [captions[i] for i in index],
                padding=True,
                truncation=True,
                max_length=spec.max_text_tokens,
                return_tensors="pt",
            )
            output = model(
                input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels, return_loss=True
            )
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += output.loss.item()
            seen += len(index)
        losses.append(epoch_loss / steps_per_epoch)
        say(f"clip epoch {epoch}/{spec.epochs}: contrastive loss {losses[-1]:.3f}")
    seconds = time.perf_counter() - started
    model.eval()
    return ClipTrainResult(model, losses, seconds, seen / seconds if seconds else 0.0)


@torch.no_grad()
def encode_texts(model: CLIPModel, tokenizer: CLIPTokenizer, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """L2-normalized text embeddings (n, projection_dim), float32."""
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt")
        features = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        features = getattr(features, "pooler_output", features)
        out.append(F.normalize(features, dim=-1).numpy().astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, model.config.projection_dim), np.float32)


@torch.no_grad()
def encode_image_batches(
    model: CLIPModel, paths: Sequence[str], image_size: int, batch_size: int = 512
) -> Iterator[np.ndarray]:
    """L2-normalized image embeddings, one array per batch of ``paths`` (streamed)."""
    for start in range(0, len(paths), batch_size):
        features = model.get_image_features(pixel_values=image_tensor(paths[start : start + batch_size], image_size))
        features = getattr(features, "pooler_output", features)
        yield F.normalize(features, dim=-1).numpy().astype(np.float32)


def zero_shot_accuracy(
    model: CLIPModel,
    tokenizer: CLIPTokenizer,
    paths: Sequence[str],
    labels: Sequence[int],
    prompts: Sequence[str],
    image_size: int,
) -> tuple[float, dict[int, float]]:
    """Top-1 of classifying each image by its most similar prompt (one prompt per label)."""
    return zero_shot_scores(model, tokenizer, paths, labels, {"": [[prompt] for prompt in prompts]}, image_size)[""]


def zero_shot_scores(
    model: CLIPModel,
    tokenizer: CLIPTokenizer,
    paths: Sequence[str],
    labels: Sequence[int],
    prompt_sets: dict[str, Sequence[Sequence[str]]],
    image_size: int,
) -> dict[str, tuple[float, dict[int, float]]]:
    """Zero-shot top-1 (overall, per class) under each named prompt set, the images encoded once. A
    prompt set holds, per label, its prompts; several are ensembled as CLIP's paper does for ImageNet
    (the mean of their normalized text embeddings, normalized again)."""
    classifiers = {}
    for name, per_label in prompt_sets.items():
        rows = [encode_texts(model, tokenizer, list(prompts)).mean(0) for prompts in per_label]
        classifiers[name] = np.stack([row / np.linalg.norm(row) for row in rows])
    scores = {name: [] for name in prompt_sets}
    for batch in encode_image_batches(model, paths, image_size):
        for name, text in classifiers.items():
            scores[name].append((batch @ text.T).argmax(1))
    labels = np.asarray(labels)
    results = {}
    for name, parts in scores.items():
        predictions = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        per_class = {int(c): float((predictions[labels == c] == c).mean()) for c in np.unique(labels)}
        results[name] = (float((predictions == labels).mean()), per_class)
    return results
