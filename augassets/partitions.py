"""The partition dimensions of the study: class (dynamic, wnids from the catalog), method (the
registry's keys) and classifier replicate (the profile's count)."""

from __future__ import annotations

import dagster as dg

from .core.methods import METHOD_KEYS

CLASS_PARTITIONS_NAME = "class"

class_partitions = dg.DynamicPartitionsDefinition(name=CLASS_PARTITIONS_NAME)
method_partitions = dg.StaticPartitionsDefinition(list(METHOD_KEYS))

# One run may cover many class × method partitions (the backfill policies are single-run); the
# headless command and the schedules select them by key, never by a key range.
class_method_partitions = dg.MultiPartitionsDefinition({"method": method_partitions, "wnid": class_partitions})


def method_replicate_partitions(replicates: int) -> dg.MultiPartitionsDefinition:
    """method × replicate, for ``replicates`` classifier runs per method."""
    return dg.MultiPartitionsDefinition(
        {"method": method_partitions, "replicate": dg.StaticPartitionsDefinition([str(r) for r in range(replicates)])}
    )
