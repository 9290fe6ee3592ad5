"""An augassets method plugin: classical augmentation as a row of the study.

Each image is one of the class's target images, randomly cropped, flipped and colour-jittered. It
answers a question the paper leaves open: do generated or retrieved images beat what the target's own
images give with a few lines of PIL? Install this package (``pip install -e
examples/augassets-example-plugin``) and run ``AUGASSETS_METHODS=real_p,example_jitter augassets
benchmark``.
"""

import random

from PIL import Image, ImageEnhance, ImageOps

from augassets.plugins import ImageRequest, MethodPlugin, PluginImage, PluginResources

SCALE = (0.6, 1.0)  # the crop's share of the image's area
COLOUR = 0.3  # brightness, contrast and saturation factors in [1 - COLOUR, 1 + COLOUR]


def jittered(path: str, rng: random.Random) -> Image.Image:
    """One random crop, flip and colour jitter of the image at ``path``, at its own size."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    side = round(min(width, height) * rng.uniform(*SCALE) ** 0.5)
    left, top = rng.randint(0, width - side), rng.randint(0, height - side)
    image = image.crop((left, top, left + side, top + side)).resize((width, height), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(1 - COLOUR, 1 + COLOUR))
    return image


def make_images(request: ImageRequest, resources: PluginResources) -> list[PluginImage]:
    """Image i starts from target image i mod the class's count, with a generator seeded for image i
    alone, so a resumed partition ends with the same images."""
    if not request.target_images:
        raise ValueError(f"class {request.cls.wnid} has no target images to augment")
    made = []
    for i in request.indices:
        source = request.target_images[i % len(request.target_images)]
        made.append(PluginImage(jittered(source, random.Random(request.image_seed(i))), family="jitter"))
    resources.log(f"example_jitter: {request.cls.wnid} images {request.indices.start}–{request.indices.stop - 1}")
    return made


METHOD = MethodPlugin(
    key="example_jitter",
    label="Target jitter (example plugin)",
    family="classical",
    description="Target images, randomly cropped, flipped and colour-jittered (an example plugin).",
    make_images=make_images,
    chunk=16,
    settings=(("scale", SCALE), ("colour", COLOUR)),
)
