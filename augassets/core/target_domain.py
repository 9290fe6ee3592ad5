"""The mini world's target domain: Fashion-MNIST garments photographed the way a dataset is.

ImageNet's photos vary in pose, scale, position, lighting and background; Fashion-MNIST's centred
silhouettes on black do not, and on them a classifier's learning curve is flat at the sizes the
paper's question needs (BENCHMARKS.md). A ``TargetDesign`` says how each garment is staged instead:
rescaled, rotated and moved, toned and tinted, put in front of a smooth studio backdrop (a lit
gradient, unlike the web pool's printed textures), partly hidden behind occluders, with sensor noise.

Every image is a pure function of (design, item): the random numbers come from a generator seeded by
the design's seed and the item, so the splits, the pool's planted copies of test images and the
duplicate analysis all see the same picture of an item, on any machine.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..profiles import TargetDesign

PARTS = {"train": 0, "test": 1}


def item_rng(design: TargetDesign, item: str) -> np.random.Generator:
    """The generator of one item's staging: ``train/123`` and ``test/123`` draw different numbers."""
    part, index = item.split("/")
    return np.random.default_rng([design.seed, 6271, PARTS[part], int(index)])


def _backdrop(design: TargetDesign, rng: np.random.Generator) -> np.ndarray:
    """A smooth studio backdrop (S, S, 3) in [0, 1]: a lit gradient in one muted colour plus soft light."""
    size = design.image_size
    level = rng.uniform(*design.backdrop_level)
    colour = level * (1 - design.backdrop_tint + design.backdrop_tint * rng.uniform(0.3, 1.0, 3))
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1.0 + design.backdrop_gradient * (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5))
    cx, cy, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.2, 0.6)
    light = 1.0 + design.backdrop_gradient * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
    return np.clip(gradient * light, 0, None)[..., None] * colour[None, None, :]


def _occlude(image: Image.Image, design: TargetDesign, rng: np.random.Generator) -> None:
    """Up to ``design.occluders`` muted shapes in front of the garment (props, hands, other objects)."""
    size = design.image_size
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, design.occluders + 1))):
        w, h = (rng.uniform(0.15, design.occluder_size, 2) * size).astype(int) + 1
        # From an edge inwards, as objects cut into a frame.
        edge = int(rng.integers(4))
        x0 = int(rng.integers(0, size - w + 1)) if edge < 2 else (0 if edge == 2 else size - w)
        y0 = int(rng.integers(0, size - h + 1)) if edge >= 2 else (0 if edge == 0 else size - h)
        fill = tuple(int(c) for c in rng.uniform(0.05, 0.6, 3) * 255)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w - 1, y0 + h - 1], fill=fill)


def stage(gray: np.ndarray, design: TargetDesign, rng: np.random.Generator) -> Image.Image:
    """One 28 px grayscale garment staged as a ``design.image_size`` px RGB target photo."""
    size = design.image_size
    scale = rng.uniform(*design.scale)
    angle = rng.uniform(-design.rotation, design.rotation)
    max_shift = design.shift * size
    shift = rng.uniform(-max_shift, max_shift, 2)
    tone = rng.uniform(*design.garment_tone)
    tint = 1 - design.garment_tint + design.garment_tint * rng.uniform(0.3, 1.0, 3)
    backdrop = _backdrop(design, rng)

    side = max(6, int(round(size * scale)))
    garment = Image.fromarray(gray, "L").resize((side, side), Image.Resampling.BILINEAR)
    if angle:
        garment = garment.rotate(angle, resample=Image.Resampling.BILINEAR)
    canvas = Image.new("L", (size, size), 0)
    offset = (size - side) // 2
    canvas.paste(garment, (offset + int(round(shift[0])), offset + int(round(shift[1]))))
    mask = np.asarray(canvas, dtype=np.float32)[..., None] / 255.0
    # The garment's own shading (its gray levels) lit by the tone, over the backdrop where it is thin.
    rgb = mask * tone * tint[None, None, :] + (1 - np.minimum(1.0, 1.5 * mask)) * backdrop
    if design.noise:
        rgb = rgb + rng.normal(0, design.noise, rgb.shape)
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), "RGB")
    if design.occluders:
        _occlude(image, design, rng)
    return image


def render(gray: np.ndarray, item: str, design: TargetDesign | None) -> Image.Image:
    """The target-domain picture of a Fashion-MNIST item (``train/123``); without a design, the
    garment as Fashion-MNIST ships it (28 px grayscale)."""
    if design is None:
        return Image.fromarray(gray, "L")
    return stage(gray, design, item_rng(design, item))
