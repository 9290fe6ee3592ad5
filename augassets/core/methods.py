"""The one registry of augmentation methods; every asset, table and plot reads it.

A method is a key (``[a-z0-9_]``, usable as a Dagster partition key), the paper's label, a family, a
short description and its *builder*: the kind of code that makes its extra training images. The asset
layer dispatches on the builder, never on a method's key, so adding a method is one entry here (and,
for a new kind, one builder). Methods whose builder is not written yet have ``builder=None`` and are
listed but never faked.

Behind the built-in rows come the methods written as plugins (plugins.py): the package's own
extensions (extensions.py), then those other packages install. ``get_method`` and
``registered_methods`` see them all; ``METHODS`` and ``METHOD_KEYS`` are the paper's thirteen rows.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from .plugins import MethodPlugin, discover

# Builders: how a method's extra images are made.
TARGET_ONLY = "target_only"  # none: the target alone
REAL_SUBSAMPLE = "real_subsample"  # the disjoint extra real subsample of the splits
TXT2IMG = "txt2img"  # the diffusion model from the method's prompts
IMG2IMG = "img2img"  # the diffusion model from target images (Boomerang)
RETRIEVAL = "retrieval"  # CLIP KNN over the diffusion model's pre-training pool
# Personalization with the diffusion model frozen, trained per class (paper §3.1): what is trained.
CONDITIONING = "conditioning"  # ⑤ one text-encoder output per class
CLUSTER_CONDITIONING = "cluster_conditioning"  # ⑥ one per k-means cluster of the class's images
PSEUDO_WORD = "pseudo_word"  # ⑧ a new token's embedding, in textual-inversion templates
# Personalization that also fine-tunes the UNet, which every class shares: one run over all classes.
CONDITIONING_UNET = "conditioning_unet"  # ⑦ Imagic-style: ⑤'s conditionings and the UNet, jointly
PSEUDO_WORD_UNET = "pseudo_word_unet"  # ⑨ ⑧'s pseudo-words and the UNet
PLUGIN = "plugin"  # a method plugin's own make_images (plugins.py)
BUILDERS = (
    TARGET_ONLY,
    REAL_SUBSAMPLE,
    TXT2IMG,
    IMG2IMG,
    RETRIEVAL,
    CONDITIONING,
    CLUSTER_CONDITIONING,
    PSEUDO_WORD,
    CONDITIONING_UNET,
    PSEUDO_WORD_UNET,
    PLUGIN,
)
PER_CLASS_FINETUNE_BUILDERS = frozenset({CONDITIONING, CLUSTER_CONDITIONING, PSEUDO_WORD})  # the diffusion model frozen
JOINT_FINETUNE_BUILDERS = frozenset({CONDITIONING_UNET, PSEUDO_WORD_UNET})  # the UNet fine-tuned on all classes at once
FINETUNE_BUILDERS = (
    PER_CLASS_FINETUNE_BUILDERS | JOINT_FINETUNE_BUILDERS
)  # fine-tuned, then sampled per checkpoint candidate
WORD_BUILDERS = frozenset({PSEUDO_WORD, PSEUDO_WORD_UNET})  # conditioned through a pseudo-word in templates
DIFFUSION_BUILDERS = frozenset({TXT2IMG, IMG2IMG}) | FINETUNE_BUILDERS  # the builders that sample the diffusion model

# Where a method's extra images come from. "none": the target alone; "real_extra": the disjoint real
# subsample of the splits; "images": the method's own augmentation_images partitions.
NO_EXTRA = "none"
REAL_EXTRA = "real_extra"
IMAGES = "images"
_EXTRA_IMAGES = {
    TARGET_ONLY: NO_EXTRA,
    REAL_SUBSAMPLE: REAL_EXTRA,
    RETRIEVAL: IMAGES,
    PLUGIN: IMAGES,
    **dict.fromkeys(DIFFUSION_BUILDERS, IMAGES),
}


@dataclass(frozen=True)
class Method:
    key: str
    paper_label: str
    family: str
    description: str
    builder: str | None = None
    resample: bool = False  # generated pools (3× the need) are resampled into each replicate's set
    plugin: MethodPlugin | None = field(default=None, compare=False, repr=False)  # builder PLUGIN: its plugin

    def __post_init__(self):
        if self.builder is not None and self.builder not in BUILDERS:
            raise ValueError(f"method {self.key!r}: unknown builder {self.builder!r} (one of {', '.join(BUILDERS)})")

    @property
    def implemented(self) -> bool:
        return self.builder is not None

    @property
    def extra_images(self) -> str | None:
        """Where the extra training images come from (``NO_EXTRA``, ``REAL_EXTRA`` or ``IMAGES``)."""
        return _EXTRA_IMAGES.get(self.builder)


METHODS: tuple[Method, ...] = (
    Method("real_p", "10% ImageNet", "baseline", "No augmentation: the p% target subsample alone.", TARGET_ONLY),
    Method(
        "real_2p",
        "20% ImageNet",
        "baseline",
        "Upper bound: the target plus a disjoint real subsample of the same per-class size.",
        REAL_SUBSAMPLE,
    ),
    Method(
        "boomerang",
        "Boomerang ⑩",
        "unconditioned",
        "Noise target images to a strength, denoise (img2img).",
        IMG2IMG,
        True,
    ),
    Method(
        "simple_prompt",
        "Simple prompt ①",
        "prompt",
        '"A photo of {name}." with all lemmas joined by ", ".',
        TXT2IMG,
        True,
    ),
    Method(
        "simple_prompt_nows",
        "Simple prompt (no ws) ②",
        "prompt",
        "The simple prompt with whitespace removed from the name.",
        TXT2IMG,
        True,
    ),
    Method(
        "clip_prompts",
        "CLIP prompts ③",
        "prompt",
        "CLIP's 80 ImageNet templates, sampled with replacement.",
        TXT2IMG,
        True,
    ),
    Method(
        "sariyildiz_prompts",
        "Sariyildiz et al. prompts ④",
        "prompt",
        "Name, hypernym, 'multiple', definition and background families.",
        TXT2IMG,
        True,
    ),
    Method(
        "ft_conditioning",
        "Fine-tuned conditioning ⑤",
        "personalized",
        "One text-encoder output per class optimized with the SD loss.",
        CONDITIONING,
        True,
    ),
    Method(
        "ft_cluster_conditioning",
        "Fine-tuned cluster conditioning ⑥",
        "personalized",
        "k conditionings per class, one per embedding cluster.",
        CLUSTER_CONDITIONING,
        True,
    ),
    Method(
        "imagic",
        "Imagic ⑦",
        "personalized",
        "Per-class conditionings and the UNet fine-tuned jointly.",
        CONDITIONING_UNET,
        True,
    ),
    Method(
        "textual_inversion",
        "Textual inversion ⑧",
        "personalized",
        "A pseudo-word per class trained with the textual-inversion templates.",
        PSEUDO_WORD,
        True,
    ),
    Method(
        "pseudoword_dm",
        "Pseudo-word + DM ⑨",
        "personalized",
        "Per-class pseudo-words and the UNet fine-tuned jointly.",
        PSEUDO_WORD_UNET,
        True,
    ),
    Method(
        "retrieval",
        "Retrieval",
        "retrieval",
        "CLIP KNN of the no-ws prompt over the diffusion model's pre-training pool.",
        RETRIEVAL,
    ),
)

_KEY = re.compile(r"^[a-z0-9_]+$")
assert all(_KEY.match(m.key) for m in METHODS), "method keys must be [a-z0-9_]"

METHOD_KEYS: tuple[str, ...] = tuple(m.key for m in METHODS)
BY_KEY: dict[str, Method] = {m.key: m for m in METHODS}


@functools.cache
def _plugins() -> tuple[dict[str, Method], dict[str, str]]:
    """The package's own extensions and the installed method plugins as methods, and why any entry
    point could not be used."""
    from .extensions import EXTENSIONS

    plugins, problems = discover()
    methods = {}
    for key, plugin in [*((p.key, p) for p in EXTENSIONS), *plugins.items()]:
        if key in BY_KEY or key in methods:
            problems[key] = f"method plugin {key!r} uses the key of one of augassets' own methods; rename it"
            continue
        methods[key] = Method(key, plugin.label, plugin.family, plugin.description, PLUGIN, plugin.resample, plugin)
    return methods, problems


def refresh_plugins() -> None:
    """Look for installed plugins again (after installing one into a running interpreter)."""
    _plugins.cache_clear()


def plugin_problems() -> dict[str, str]:
    """{entry point name: why it could not be used} for the installed plugins that failed to register."""
    return dict(_plugins()[1])


def registered_methods() -> tuple[Method, ...]:
    """The paper's methods, the package's extensions, then the installed plugins by key."""
    return METHODS + tuple(_plugins()[0].values())


def method_order() -> dict[str, int]:
    """{key: position} in registry order: how tables and figures order their rows."""
    return {m.key: i for i, m in enumerate(registered_methods())}


def get_method(key: str) -> Method:
    if key in BY_KEY:
        return BY_KEY[key]
    plugins, problems = _plugins()
    if key in plugins:
        return plugins[key]
    if key in problems:
        raise ValueError(problems[key])
    raise ValueError(f"unknown method {key!r}; registered methods: {', '.join(m.key for m in registered_methods())}")


def runnable_methods(requested: tuple[str, ...]) -> tuple[Method, ...]:
    """The requested methods in registry order; a method whose builder does not exist yet is an error."""
    methods = [get_method(key) for key in requested]
    missing = [m.key for m in methods if not m.implemented]
    if missing:
        raise ValueError(
            f"method(s) {', '.join(missing)} are registered but not implemented yet; remove them from the "
            "profile's `methods`"
        )
    return tuple(m for m in registered_methods() if m in methods)


def keys_with_builder(builder: str | frozenset, keys=None) -> tuple[str, ...]:
    """The registered methods (or those among ``keys``) that ``builder`` (or any of a set of builders)
    makes, in registry order."""
    builders = {builder} if isinstance(builder, str) else builder
    return tuple(m.key for m in registered_methods() if m.builder in builders and (keys is None or m.key in keys))
