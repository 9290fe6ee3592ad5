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
    return dg.MultiPartitionsDefinition({"method": dg.StaticPartitionsDefinition(image_method_keys(profile)), "wnid": class_partitions})


def method_replicate_partitions(profile: Profile) -> dg.MultiPartitionsDefinition:
    """method × replicate, for ``ClassifierSpec.replicates`` classifier runs per method."""
    replicates = [str(r) for r in range(profile.classifier.replicates)]
    return dg.MultiPartitionsDefinition({"method": method_partitions(profile), "replicate": dg.StaticPartitionsDefinition(replicates)})
