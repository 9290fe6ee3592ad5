"""Prompt builders (paper §3.1) and prompt limits."""

import pytest

from augassets.core.clip import build_tokenizer
from augassets.core.prompts import (
    ClassNames,
    PromptError,
    build_prompts,
    clip_templates,
    fit_to_tokenizer,
    gloss_without_examples,
    load_templates,
    places365_backgrounds,
    simple_prompt,
    simple_prompt_nows,
)


def test_prompts_handle_commas_quotes_and_unicode():
    assert simple_prompt("tiger shark, Galeocerdo cuvieri") == "A photo of tiger shark, Galeocerdo cuvieri."
    assert simple_prompt_nows("jack-o'-lantern, café au lait") == "A photo of jack-o'-lantern,caféaulait."


def test_prompt_builders_follow_the_paper():
    trousers = ClassNames(
        "trouser, pant",
        "garment",
        '(usually in the plural) a garment extending from the waist; "he had a sharp crease in his trousers"',
    )
    assert build_prompts("simple_prompt", trousers, 2, 0) == [("simple", "A photo of trouser, pant.")] * 2
    assert build_prompts("simple_prompt_nows", trousers, 1, 0) == [("simple_nows", "A photo of trouser,pant.")]
    clip = build_prompts("clip_prompts", trousers, 200, seed=3)
    assert clip == build_prompts("clip_prompts", trousers, 200, seed=3), "seeded"
    assert len(clip_templates()) == 80 and all("trouser,pant" in p for _, p in clip)
    assert len({p for _, p in clip}) > 50, "templates are sampled with replacement across the 80"
    sariyildiz = build_prompts("sariyildiz_prompts", trousers, 62, seed=1)
    counts = {}
    for family, _ in sariyildiz:
        counts[family] = counts.get(family, 0) + 1
    assert sorted(counts.values()) == [10, 10, 10, 10, 11, 11], "equal counts per family"
    backgrounds = [p for f, p in sariyildiz if f == "name_hypernym_background"]
    assert all(p.startswith("trouser, pant, garment inside ") for p in backgrounds)
    assert len(places365_backgrounds()) == 365 and "apartment building outdoor" in places365_backgrounds()
    assert (
        "name_definition",
        "trouser, pant, (usually in the plural) a garment extending from the waist",
    ) in sariyildiz
    assert gloss_without_examples('a coat; "he wore it"') == "a coat"

    assert build_prompts("boomerang", trousers, 3, 0) == [("boomerang", "")] * 3
    with pytest.raises(PromptError, match="no prompt builder"):
        build_prompts("retrieval", trousers, 1, 0)
    with pytest.raises(PromptError, match="empty class name"):
        build_prompts("simple_prompt", ClassNames(" ", "", ""), 1, 0)
    with pytest.raises(PromptError, match="needs exactly one"):
        load_templates("fashion_mnist_wordnet.tsv")


def test_overlong_and_empty_prompts(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    short, cut = fit_to_tokenizer("A photo of boot.", tokenizer)
    assert (short, cut) == ("A photo of boot.", False)
    long_prompt = "A photo of " + ", ".join(["great white shark"] * 40) + "."
    fitted, cut = fit_to_tokenizer(long_prompt, tokenizer)
    assert cut and len(tokenizer(fitted).input_ids) <= 77
    with pytest.raises(PromptError, match="empty prompt"):
        fit_to_tokenizer("   ", tokenizer)
    assert fit_to_tokenizer("", tokenizer, allow_empty=True) == ("", False)
