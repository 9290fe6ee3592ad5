"""Prompt builders (paper §3.1). Each returns the prompt text for a class from its catalog row."""

from __future__ import annotations

from .catalog import name_without_whitespace

SIMPLE_TEMPLATE = "A photo of {}."


def simple_prompt(name: str) -> str:
    """① "A photo of {name}." with all lemmas of the synset joined by ", "."""
    return SIMPLE_TEMPLATE.format(name)


def simple_prompt_nows(name: str) -> str:
    """② the same with whitespace removed from the name — also retrieval's KNN query."""
    return SIMPLE_TEMPLATE.format(name_without_whitespace(name))
