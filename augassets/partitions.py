"""The partition dimensions of the study, per profile: class (dynamic, wnids from the catalog), method
(the profile's methods, in registry order) and classifier replicate (the profile's count).

A profile's definitions hold only its own methods, so "every partition" — what the automation
conditions, the schedule's backfill and the UI's partition bars count — is exactly the profile's grid.
"""

from __future__ import annotations

import dagster as dg

from .core.methods import IMAGES, runnable_methods
from .profiles import Profile

CLASS_PARTITIONS_NAME = "class"

class_partitions = dg.DynamicPartitionsDefinition(name=CLASS_PARTITIONS_NAME)


def method_keys(profile: Profile) -> list[str]:
    return [m.key for m in runnable_methods(profile.methods)]


def image_method_keys(profile: Profile) -> list[str]:
    """The profile's methods that make augmentation images (generation, retrieval)."""
    return [m.key for m in runnable_methods(profile.methods) if m.extra_images == IMAGES]


def method_partitions(profile: Profile) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(method_keys(profile))


def class_method_partitions(profile: Profile) -> dg.MultiPartitionsDefinition:
    """method × class for the methods that make images. One run may cover many of these partitions
    (the backfill policies are single-run); runs select them by key, never by dimension order."""
    return dg.MultiPartitionsDefinition(
        {"method": dg.StaticPartitionsDefinition(image_method_keys(profile)), "wnid": class_partitions}
    )


def method_and_class(key: dg.MultiPartitionKey) -> tuple[str, str]:
    """(method, wnid) of a class × method partition key."""
    dims = key.keys_by_dimension
    return dims["method"], dims["wnid"]


def same_class_of(keys: list[str]) -> dg.MultiPartitionMapping:
    """From a class × method asset over more methods (class_prompts), only these methods' partitions of
    the same class."""
    return dg.MultiPartitionMapping(
        {
            "method": dg.DimensionPartitionMapping("method", dg.StaticPartitionMapping({m: m for m in keys})),
            "wnid": dg.DimensionPartitionMapping("wnid", dg.IdentityPartitionMapping()),
        }
    )


def scaling_method_keys(profile: Profile) -> list[str]:
    """The methods of the scaling analysis (none without ratios): those of ``ScalingSpec.methods`` the
    profile runs; by default the paper's, pseudo-word + DM (⑨) and retrieval, or the simple prompt and
    retrieval where the profile runs no ⑨. Each must be a retrieval, prompt, personalized or plugin method."""
    from .core.methods import FINETUNE_BUILDERS, PLUGIN, RETRIEVAL, TXT2IMG, get_method

    if not profile.scaling.ratios:
        return []
    chosen = profile.scaling.methods or (
        ("pseudoword_dm", "retrieval") if "pseudoword_dm" in profile.methods else ("simple_prompt", "retrieval")
    )
    for key in chosen:
        if get_method(key).builder not in (RETRIEVAL, TXT2IMG, PLUGIN, *FINETUNE_BUILDERS):
            raise ValueError(
                f"profile {profile.name!r}: scaling method {key!r} is not a retrieval, prompt, personalized or "
                "plugin method (Boomerang starts from the target's own images); set ScalingSpec.methods"
            )
    return [m.key for m in runnable_methods(profile.methods) if m.key in chosen]


def ratio_key(ratio: float) -> str:
    """A ratio as its partition key (dimension ``percent``): the percentage of the target's size (1.0 → "100")."""
    return f"{100 * ratio:g}"


def scaling_partitions(profile: Profile) -> dg.MultiPartitionsDefinition:
    """method × percent (the augmentation ratio as a percentage of the target's size) for the scaling
    analysis's classifiers."""
    return dg.MultiPartitionsDefinition(
        {
            "method": dg.StaticPartitionsDefinition(scaling_method_keys(profile)),
            "percent": dg.StaticPartitionsDefinition([ratio_key(r) for r in profile.scaling.ratios]),
        }
    )


def method_replicate_partitions(profile: Profile) -> dg.MultiPartitionsDefinition:
    """method × replicate, for ``ClassifierSpec.replicates`` classifier runs per method."""
    replicates = [str(r) for r in range(profile.classifier.replicates)]
    return dg.MultiPartitionsDefinition(
        {"method": method_partitions(profile), "replicate": dg.StaticPartitionsDefinition(replicates)}
    )
