"""The one registry of augmentation methods; every asset, table and plot reads it.

A method is a key (``[a-z0-9_]``, usable as a Dagster partition key), the paper's label, a family and
a short description. ``extra_images`` says where a method's extra training images come from; methods
whose builder is not written yet have ``extra_images=None`` and are listed but never faked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Where a method's extra images come from. "none": the target alone; "real_extra": the disjoint real
# subsample of the splits; "images": the method's own augmentation_images partitions.
NO_EXTRA = "none"
REAL_EXTRA = "real_extra"
IMAGES = "images"


@dataclass(frozen=True)
class Method:
    key: str
    paper_label: str
    family: str
    description: str
    extra_images: str | None = None
    resample: bool = False  # generated pools (3× the need) are resampled into each replicate's set

    @property
    def implemented(self) -> bool:
        return self.extra_images is not None


METHODS: tuple[Method, ...] = (
    Method("real_p", "10% ImageNet", "baseline", "No augmentation: the p% target subsample alone.", NO_EXTRA),
    Method(
        "real_2p",
        "20% ImageNet",
        "baseline",
        "Upper bound: the target plus a disjoint real subsample of the same per-class size.",
        REAL_EXTRA,
    ),
    Method("boomerang", "Boomerang ⑩", "unconditioned", "Noise target images to a strength, denoise (img2img).", IMAGES, True),
    Method("simple_prompt", "Simple prompt ①", "prompt", '"A photo of {name}." with all lemmas joined by ", ".', IMAGES, True),
    Method("simple_prompt_nows", "Simple prompt (no ws) ②", "prompt", "The simple prompt with whitespace removed from the name.", IMAGES, True),
    Method("clip_prompts", "CLIP prompts ③", "prompt", "CLIP's 80 ImageNet templates, sampled with replacement.", IMAGES, True),
    Method("sariyildiz_prompts", "Sariyildiz et al. prompts ④", "prompt", "Name, hypernym, 'multiple', definition and background families.", IMAGES, True),
    Method("ft_conditioning", "Fine-tuned conditioning ⑤", "personalized", "One text-encoder output per class optimized with the SD loss."),
    Method("ft_cluster_conditioning", "Fine-tuned cluster conditioning ⑥", "personalized", "k conditionings per class, one per embedding cluster."),
    Method("imagic", "Imagic ⑦", "personalized", "Conditioning and UNet fine-tuned jointly."),
    Method("textual_inversion", "Textual inversion ⑧", "personalized", "A pseudo-word per class trained with the textual-inversion templates."),
    Method("pseudoword_dm", "Pseudo-word + DM ⑨", "personalized", "Textual inversion plus UNet fine-tuning."),
    Method("retrieval", "Retrieval", "retrieval", "CLIP KNN of the no-ws prompt over the diffusion model's pre-training pool.", IMAGES),
)

_KEY = re.compile(r"^[a-z0-9_]+$")
assert all(_KEY.match(m.key) for m in METHODS), "method keys must be [a-z0-9_]"

METHOD_KEYS: tuple[str, ...] = tuple(m.key for m in METHODS)
BY_KEY: dict[str, Method] = {m.key: m for m in METHODS}


def get_method(key: str) -> Method:
    try:
        return BY_KEY[key]
    except KeyError:
        raise ValueError(f"unknown method {key!r}; registered methods: {', '.join(METHOD_KEYS)}") from None


def runnable_methods(requested: tuple[str, ...]) -> tuple[Method, ...]:
    """The requested methods in registry order; a method whose builder does not exist yet is an error."""
    methods = [get_method(key) for key in requested]
    missing = [m.key for m in methods if not m.implemented]
    if missing:
        raise ValueError(
            f"method(s) {', '.join(missing)} are registered but not implemented yet; remove them from the "
            "profile's `methods`"
        )
    return tuple(m for m in METHODS if m in methods)
