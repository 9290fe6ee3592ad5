"""Prompt builders (paper §3.1): one prompt per image to generate, seeded.

① simple_prompt        "A photo of {name}." — name = all lemmas of the synset joined by ", "
② simple_prompt_nows   the same with whitespace removed from the name (also retrieval's KNN query)
③ clip_prompts         CLIP's 80 ImageNet templates with the no-ws name, sampled with replacement
④ sariyildiz_prompts   six template families with equal counts, a random Places365 background per
                       image for the background family — our documented reconstruction of Sariyildiz
                       et al.'s families (``data/sariyildiz_prompts.md``: the paper gives no strings)
⑤ ⑥ ⑦ ft_(cluster_)conditioning, imagic  the no-ws simple prompt, whose encoding initializes the
                       conditioning that is then fine-tuned (generation uses the fine-tuned one)
⑧ ⑨ textual_inversion, pseudoword_dm  the textual-inversion templates, sampled with replacement, with
                       the ``{}`` left for the class's pseudo-word (known once it is trained)
⑩ boomerang            no prompt: img2img from the target images, unconditioned
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import numpy as np

from .catalog import data_lines, name_without_whitespace
from .methods import (
    CLUSTER_CONDITIONING,
    CONDITIONING,
    CONDITIONING_UNET,
    IMG2IMG,
    TXT2IMG,
    WORD_BUILDERS,
    get_method,
    keys_with_builder,
)

SIMPLE_TEMPLATE = "A photo of {}."
SARIYILDIZ_FAMILIES = {
    "name": "{c}",
    "name_hypernym": "{c}, {h}",
    "multiple": "multiple {c}, {h}",
    "multiple_different": "multiple different {c}, {h}",
    "name_definition": "{c}, {d}",
    "name_hypernym_background": "{c}, {h} inside {b}",
}


class PromptError(ValueError):
    pass


@dataclass(frozen=True)
class ClassNames:
    """What the builders need of a catalog row."""

    name: str
    hypernym: str
    definition: str


def simple_prompt(name: str) -> str:
    """① "A photo of {name}." with all lemmas of the synset joined by ", "."""
    return SIMPLE_TEMPLATE.format(name)


def simple_prompt_nows(name: str) -> str:
    """② the same with whitespace removed from the name — also retrieval's KNN query."""
    return SIMPLE_TEMPLATE.format(name_without_whitespace(name))


def load_templates(filename: str) -> tuple[str, ...]:
    """Templates with one ``{}`` placeholder each; a line without one is an error naming it."""
    templates = tuple(data_lines(filename))
    for number, template in enumerate(templates, 1):
        if template.count("{}") != 1:
            raise PromptError(f"{filename}: template {number} {template!r} needs exactly one '{{}}' placeholder")
    return templates


@cache
def clip_templates() -> tuple[str, ...]:
    return load_templates("clip_imagenet_templates.txt")


@cache
def textual_inversion_templates() -> tuple[str, ...]:
    return load_templates("textual_inversion_templates.txt")


@cache
def places365_backgrounds() -> tuple[str, ...]:
    """Places365 categories as words: ``/a/apartment_building/outdoor 12`` -> "apartment building outdoor"."""
    names = []
    for line in data_lines("places365_categories.txt"):
        path = line.split()[0]
        names.append(" ".join(path.split("/")[2:]).replace("_", " "))
    return tuple(names)


def gloss_without_examples(definition: str) -> str:
    """A WordNet gloss without its quoted example sentences."""
    return re.split(r';\s*"', definition, maxsplit=1)[0].strip()


def clip_prompts(name: str, count: int, rng: np.random.Generator) -> list[str]:
    """③ CLIP's ImageNet templates filled with the no-ws name, sampled with replacement."""
    templates = clip_templates()
    nows = name_without_whitespace(name)
    return [templates[i].format(nows) for i in rng.integers(len(templates), size=count)]


def sariyildiz_prompts(names: ClassNames, count: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """④ (family, prompt) pairs: equal counts per family (the remainder spread over a random subset of
    families), a random Places365 background per image, in a shuffled order."""
    families = list(SARIYILDIZ_FAMILIES)
    per_family = [count // len(families)] * len(families)
    for i in rng.permutation(len(families))[: count % len(families)]:
        per_family[i] += 1
    backgrounds = places365_backgrounds()
    definition = gloss_without_examples(names.definition)
    prompts = []
    for family, n in zip(families, per_family):
        for _ in range(n):
            background = backgrounds[rng.integers(len(backgrounds))]
            text = SARIYILDIZ_FAMILIES[family].format(c=names.name, h=names.hypernym, d=definition, b=background)
            prompts.append((family, text))
    return [prompts[i] for i in rng.permutation(len(prompts))]


def build_prompts(method: str, names: ClassNames, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (template family, prompt) pairs for one class; deterministic for a seed."""
    if not names.name.strip():
        raise PromptError("empty class name: every class needs at least one lemma in the catalog")
    rng = np.random.default_rng(seed)
    if method == "simple_prompt":
        return [("simple", simple_prompt(names.name))] * count
    if method == "simple_prompt_nows":
        return [("simple_nows", simple_prompt_nows(names.name))] * count
    if method == "clip_prompts":
        return [("clip", p) for p in clip_prompts(names.name, count, rng)]
    if method == "sariyildiz_prompts":
        return sariyildiz_prompts(names, count, rng)
    builder = get_method(method).builder
    if builder in (CONDITIONING, CLUSTER_CONDITIONING, CONDITIONING_UNET):
        return [("conditioning_init", simple_prompt_nows(names.name))] * count
    if builder in WORD_BUILDERS:
        templates = textual_inversion_templates()
        return [("textual_inversion", templates[i]) for i in rng.integers(len(templates), size=count)]
    if builder == IMG2IMG:
        return [(method, "")] * count  # Boomerang adapts no prompt: img2img from the target images
    raise PromptError(
        f"method {method!r} has no prompt builder (prompt methods: {', '.join(keys_with_builder(TXT2IMG))})"
    )


def fit_to_tokenizer(prompt: str, tokenizer, allow_empty: bool = False) -> tuple[str, bool]:
    """The prompt as the text encoder will see it: cut to the tokenizer's limit (77 tokens for CLIP,
    start and end tokens included). Returns (prompt, truncated); an empty prompt is an error unless
    ``allow_empty`` (unconditional generation)."""
    if not prompt.strip():
        if allow_empty:
            return prompt, False
        raise PromptError("empty prompt")
    ids = tokenizer(prompt, truncation=False).input_ids
    limit = tokenizer.model_max_length
    if len(ids) <= limit:
        return prompt, False
    return tokenizer.decode(ids[1 : limit - 1]), True
