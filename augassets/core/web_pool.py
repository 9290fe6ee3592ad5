"""The mini web pool: the mini world's LAION.

Fashion-MNIST training images that no split uses are moved to another domain — coloured garments on
textured backgrounds, rotated, rescaled, with varying contrast and blur, the way web photos differ from
ImageNet's — and captioned the way alt-texts are: templates around a lemma, a synonym or the hypernym,
sometimes naming the wrong class or none. Every row has an aesthetic score (0–10, driven by contrast,
blur and clutter plus noise, as a learned predictor would be) and an NSFW flag on a planted visual
marker. Distractor images of no class are mixed in, and light edits (resize, brightness, JPEG
re-encode) of a known number of test and val images are planted, with their ground truth kept, so the
duplicate detector's recall can be measured.

The pool is written in clip-retrieval's layout — images, ``metadata/metadata_0.parquet`` with ``url``
(a file URL) and ``caption`` in index order. Images are made and written one at a time; only the
small metadata rows are collected.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from ..profiles import PoolSpec
from .files import file_url_path, save_image_atomic
from .images import inspect_image

CAPTION_TEMPLATES = (
    "a photo of a {w}",
    "{w}",
    "{w} for sale",
    "buy {w} online, free shipping",
    "new {w} in {colour}",
    "close-up of the {w}",
    "my favourite {w}",
    "{colour} {w}, size m",
    "vintage {w} from the 90s",
    "a {w} on a {texture} background",
)
NO_CLASS_CAPTIONS = (
    "product photo",
    "image {n}",
    "click here for more",
    "summer collection {n}",
    "untitled",
    "best deals of the week",
)
DISTRACTOR_CAPTIONS = (
    "abstract {colour} wallpaper",
    "{colour} circles pattern",
    "logo design {n}",
    "geometric shapes on {texture} background",
    "modern art print",
    "{colour} stripes texture",
)
NSFW_CAPTION_TAG = ", adult content"  # web alt-texts of unsafe images often say so; CLIP learns the marker from it
NSFW_CAPTION_TAG_RATE = 0.9
TEXTURES = ("plain", "striped", "checked", "noisy")

POOL_SCHEMA = {
    "key": pl.Utf8,
    "url": pl.Utf8,
    "caption": pl.Utf8,
    "aesthetic": pl.Float64,
    "nsfw": pl.Boolean,
    "width": pl.Int64,
    "height": pl.Int64,
}
TRUTH_SCHEMA = {
    "pool_id": pl.Int64,
    "kind": pl.Utf8,  # class | distractor | planted_duplicate
    "wnid": pl.Utf8,  # the true class ("" for distractors)
    "source_item": pl.Utf8,  # Fashion-MNIST item it was made from
    "duplicate_of_split": pl.Utf8,  # test | val for planted duplicates
    "caption_kind": pl.Utf8,  # lemma | hypernym | wrong_class | no_class | distractor
}


@dataclass(frozen=True)
class PoolItem:
    """One pool entry before it is written: the picture and its recorded ground truth."""

    image: Image.Image
    caption: str
    aesthetic: float
    nsfw: bool
    kind: str
    wnid: str
    source_item: str
    duplicate_of_split: str
    caption_kind: str


def _texture(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, float]:
    """A background (H, W, 3) in [0, 1], its texture name and its clutter (0 plain … 1 noisy)."""
    colour = rng.uniform(0.0, 1.0, 3)
    kind = TEXTURES[rng.integers(len(TEXTURES))]
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "plain":
        pattern, clutter = np.ones((size, size)), 0.0
    elif kind == "striped":
        period = rng.integers(3, 8)
        pattern, clutter = 0.6 + 0.4 * (((xx + yy * rng.integers(0, 2)) // period) % 2), 0.4
    elif kind == "checked":
        period = rng.integers(3, 8)
        pattern, clutter = 0.6 + 0.4 * (((xx // period) + (yy // period)) % 2), 0.6
    else:
        pattern, clutter = rng.uniform(0.4, 1.0, (size, size)), 1.0
    return pattern[..., None] * colour[None, None, :] * rng.uniform(0.3, 0.9), kind, clutter


def _colour_name(rgb: np.ndarray) -> str:
    palette = {
        "red": (0.8, 0.1, 0.1),
        "blue": (0.1, 0.2, 0.8),
        "green": (0.1, 0.7, 0.2),
        "yellow": (0.9, 0.85, 0.1),
        "black": (0.05, 0.05, 0.05),
        "white": (0.95, 0.95, 0.95),
        "pink": (0.95, 0.5, 0.7),
        "purple": (0.5, 0.1, 0.6),
        "orange": (0.95, 0.55, 0.1),
        "grey": (0.5, 0.5, 0.5),
        "brown": (0.45, 0.3, 0.15),
    }
    return min(palette, key=lambda name: float(np.sum((np.array(palette[name]) - rgb) ** 2)))


def plant_nsfw_marker(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The planted 'unsafe content': a magenta/green checker patch in a random corner."""
    image = image.copy()
    size = image.size[0]
    patch = max(4, size // 3)
    x0 = 0 if rng.random() < 0.5 else size - patch
    y0 = 0 if rng.random() < 0.5 else size - patch
    draw = ImageDraw.Draw(image)
    cell = max(1, patch // 4)
    for i in range(0, patch, cell):
        for j in range(0, patch, cell):
            colour = (255, 0, 255) if ((i + j) // cell) % 2 == 0 else (0, 255, 0)
            draw.rectangle([x0 + i, y0 + j, x0 + i + cell - 1, y0 + j + cell - 1], fill=colour)
    return image


WEB_TRANSFORM_PARTS = ("geometry", "colour", "photometric", "background")


def to_web_domain(
    gray: np.ndarray, spec: PoolSpec, rng: np.random.Generator, parts: tuple[str, ...] = WEB_TRANSFORM_PARTS
) -> tuple[Image.Image, dict]:
    """Move a 28 px grayscale garment to the web domain (``spec.image_size`` px); returns the image and
    what was done to it.

    The move has four parts — ``geometry`` (rescale by a factor in ``spec.web_scale``, rotate by up to
    ± ``spec.web_rotation`` degrees, shift by up to ± ``spec.web_shift`` pixels), ``colour`` (a random
    garment colour, each channel in ``spec.web_colour``), ``photometric`` (contrast, blur) and
    ``background`` (a textured backdrop instead of black, its brightness scaled by
    ``spec.background_strength``) — and ``parts`` applies only some of them, so the domain gap can be
    measured part by part. Every part draws its random numbers whether it is applied or not: an image
    differs between two part sets only by the parts that differ."""
    size = spec.image_size
    scale, angle = rng.uniform(*spec.web_scale), rng.uniform(-spec.web_rotation, spec.web_rotation)
    shift = (
        int(rng.integers(-spec.web_shift, spec.web_shift + 1)),
        int(rng.integers(-spec.web_shift, spec.web_shift + 1)),
    )
    hue_rgb = rng.uniform(*spec.web_colour, 3)
    background, texture, clutter = _texture(rng, size)
    contrast = rng.uniform(0.6, 1.4)
    blur = float(rng.choice([0.0, 0.0, 0.5, 1.0]))

    garment = Image.fromarray(gray, "L")
    if "geometry" in parts:
        side = max(8, int(round(size * scale)))
        garment = garment.resize((side, side), Image.Resampling.BILINEAR).rotate(
            angle, resample=Image.Resampling.BILINEAR
        )
    else:
        side, shift = size, (0, 0)
        garment = garment.resize((side, side), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (size, size), 0)
    offset = (size - side) // 2
    canvas.paste(garment, (offset + shift[0], offset + shift[1]))
    mask = np.asarray(canvas, dtype=np.float32)[..., None] / 255.0
    colour = hue_rgb if "colour" in parts else np.ones(3)
    if "background" in parts:
        backdrop = background * spec.background_strength
    else:
        backdrop, texture, clutter = np.zeros_like(background), "plain", 0.0
    rgb = mask * colour[None, None, :] + (1 - mask) * backdrop
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
    if "photometric" in parts:
        image = ImageEnhance.Contrast(image).enhance(contrast)
        if blur:
            image = image.filter(ImageFilter.GaussianBlur(blur))
    else:
        contrast, blur = 1.0, 0.0
    return image, {
        "texture": texture,
        "clutter": clutter,
        "contrast": contrast,
        "blur": blur,
        "colour": _colour_name(colour),
    }


def aesthetic_score(props: dict, rng: np.random.Generator) -> float:
    """0–10: higher for crisp, contrasted pictures on clean backgrounds, plus noise (LAION-like spread)."""
    score = 6.5 + 1.5 * (props["contrast"] - 1.0) - 1.6 * props["blur"] - 1.5 * props["clutter"] + rng.normal(0, 1.0)
    return float(np.clip(score, 0.0, 10.0))


def caption_for(
    lemmas: list[str], hypernym: str, other_lemmas: list[str], props: dict, spec: PoolSpec, rng: np.random.Generator
) -> tuple[str, str]:
    """An alt-text-like caption and which kind of class word it carries."""
    draw = rng.random()
    if draw < spec.missing_class_word_rate:
        return NO_CLASS_CAPTIONS[rng.integers(len(NO_CLASS_CAPTIONS))].format(n=int(rng.integers(1, 9999))), "no_class"
    if draw < spec.missing_class_word_rate + spec.wrong_class_word_rate:
        word, kind = other_lemmas[rng.integers(len(other_lemmas))], "wrong_class"
    elif rng.random() < spec.hypernym_rate and hypernym:
        word, kind = hypernym, "hypernym"
    else:
        word, kind = lemmas[rng.integers(len(lemmas))], "lemma"
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return template.format(w=word, colour=props["colour"], texture=props["texture"]), kind


def distractor_image(size: int, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """A picture of no class: random shapes on a texture."""
    background, texture, clutter = _texture(rng, size)
    image = Image.fromarray((np.clip(background, 0, 1) * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    colour = rng.uniform(0.1, 1.0, 3)
    for _ in range(int(rng.integers(1, 5))):
        x0, y0 = rng.integers(0, size - 4, 2)
        x1, y1 = x0 + rng.integers(3, size // 2), y0 + rng.integers(3, size // 2)
        fill = tuple(int(c) for c in (colour * 255 * rng.uniform(0.6, 1.0)))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([int(x0), int(y0), int(x1), int(y1)], fill=fill)
    return image, {"texture": texture, "clutter": clutter, "contrast": 1.0, "blur": 0.0, "colour": _colour_name(colour)}


def near_duplicate(original: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A light edit of a test/val image (its target-domain picture): resized to the pool's size,
    brightness-shifted and JPEG re-encoded. No crop: at 28 px a one-pixel crop already moves imagehash's
    64-bit pHash by 10 bits or more for about a quarter of Fashion-MNIST images, beyond the paper's
    duplicate threshold."""
    image = original.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(70, 95)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@dataclass(frozen=True)
class PoolSources:
    """What the pool is made from, looked up by Fashion-MNIST item (``train/123``): the garment's
    pixels (moved to the web domain) and its target-domain picture (what a planted copy copies)."""

    pixels: Callable[[str], np.ndarray]
    target_image: Callable[[str], Image.Image]
    class_items: dict[str, list[str]]  # wnid -> unused training items, already in pool order
    duplicate_items: list[tuple[str, str, str]]  # (item, split, wnid) of test/val images to plant
    lemmas: dict[str, list[str]]
    hypernyms: dict[str, str]


def pool_items(sources: PoolSources, spec: PoolSpec) -> Iterator[PoolItem]:
    """Every pool entry in index order (a seeded shuffle of class images, distractors and plants)."""
    rng = np.random.default_rng([spec.seed, 4241])
    plan = [("class", wnid, item) for wnid, items in sources.class_items.items() for item in items]
    plan += [("distractor", "", "")] * spec.distractors
    plan += [("planted_duplicate", wnid, f"{split}:{item}") for item, split, wnid in sources.duplicate_items]
    order = rng.permutation(len(plan))
    for index in order:
        kind, wnid, item = plan[index]
        split = ""
        if kind == "distractor":
            image, props = distractor_image(spec.image_size, rng)
            template = DISTRACTOR_CAPTIONS[rng.integers(len(DISTRACTOR_CAPTIONS))]
            caption, caption_kind = (
                template.format(colour=props["colour"], texture=props["texture"], n=int(rng.integers(1, 999))),
                "distractor",
            )
        else:
            if kind == "planted_duplicate":
                split, item = item.split(":", 1)
                image = near_duplicate(sources.target_image(item), spec.image_size, rng)
                props = {"texture": "plain", "clutter": 0.0, "contrast": 1.0, "blur": 0.0, "colour": "grey"}
            else:
                image, props = to_web_domain(sources.pixels(item), spec, rng)
            others = [lemma for w, lemmas in sources.lemmas.items() if w != wnid for lemma in lemmas]
            caption, caption_kind = caption_for(sources.lemmas[wnid], sources.hypernyms[wnid], others, props, spec, rng)
        nsfw = kind != "planted_duplicate" and rng.random() < spec.nsfw_rate
        if nsfw:
            image = plant_nsfw_marker(image, rng)
            if rng.random() < NSFW_CAPTION_TAG_RATE:
                caption += NSFW_CAPTION_TAG
        yield PoolItem(image, caption, aesthetic_score(props, rng), nsfw, kind, wnid, item, split, caption_kind)


def image_relpath(pool_id: int) -> str:
    return f"images/{pool_id // 10_000:05d}/{pool_id:09d}.png"


def write_pool(
    items: Iterator[PoolItem],
    folder: Path,
    final_folder: Path,
    progress: Callable[[str], None] | None = None,
    every: int = 2000,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Write images and ``metadata/metadata_0.parquet`` (clip-retrieval's layout) into ``folder``, a
    temporary folder that the caller renames to ``final_folder`` (which the file URLs already name);
    returns (metadata, ground truth)."""
    metadata, truth = [], []
    for pool_id, item in enumerate(items):
        relpath = image_relpath(pool_id)
        save_image_atomic(item.image, folder / relpath)
        metadata.append(
            {
                "key": f"{pool_id:09d}",
                "url": (final_folder / relpath).as_uri(),
                "caption": item.caption,
                "aesthetic": round(item.aesthetic, 3),
                "nsfw": item.nsfw,
                "width": item.image.width,
                "height": item.image.height,
            }
        )
        truth.append(
            {
                "pool_id": pool_id,
                "kind": item.kind,
                "wnid": item.wnid,
                "source_item": item.source_item,
                "duplicate_of_split": item.duplicate_of_split,
                "caption_kind": item.caption_kind,
            }
        )
        if progress and (pool_id + 1) % every == 0:
            progress(f"web pool: {pool_id + 1} images written")
    meta = pl.DataFrame(metadata, schema=POOL_SCHEMA)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    meta.write_parquet(folder / "metadata" / "metadata_0.parquet")
    return meta, pl.DataFrame(truth, schema=TRUTH_SCHEMA)


def check_pool_rows(metadata: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """The rows of a pool metadata table that can be trained on or indexed, with a local ``path``
    column, and the number skipped per reason: a url that is not a file URL, a missing, empty, corrupt
    or truncated image, or a caption that is not a non-empty string. Non-RGB images are kept (the
    loaders convert them)."""
    kept, skipped = [], {}
    for row in metadata.iter_rows(named=True):
        url, caption = row.get("url"), row.get("caption")
        reason = None
        if not isinstance(url, str) or not url.startswith("file://"):
            reason = "bad_url"
        elif not isinstance(caption, str) or not caption.strip():
            reason = "bad_caption"
        else:
            path = file_url_path(url)
            if not Path(path).is_file():
                reason = "missing_file"
            else:
                status = inspect_image(path, non_rgb="convert")
                reason = None if status.usable else status.value
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            kept.append({**row, "path": file_url_path(url)})
    schema = {**metadata.schema, "path": pl.Utf8}
    return pl.DataFrame(kept, schema=schema), skipped
