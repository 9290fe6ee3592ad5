"""The partition dimensions of the study: class (dynamic, wnids from the catalog), method (the
registry's keys) and classifier replicate."""

from __future__ import annotations

import dagster as dg

from .core.methods import METHOD_KEYS
from .profiles import get_profile

CLASS_PARTITIONS_NAME = "class"

class_partitions = dg.DynamicPartitionsDefinition(name=CLASS_PARTITIONS_NAME)
method_partitions = dg.StaticPartitionsDefinition(list(METHOD_KEYS))
replicate_partitions = dg.StaticPartitionsDefinition([str(r) for r in range(get_profile().classifier.replicates)])

method_replicate_partitions = dg.MultiPartitionsDefinition({"method": method_partitions, "replicate": replicate_partitions})

# Dimension names sort "method" before "wnid", so a method's classes are contiguous partition keys
# ("retrieval|n02774152", …) and one run covers a method for every class.
class_method_partitions = dg.MultiPartitionsDefinition({"method": method_partitions, "wnid": class_partitions})
