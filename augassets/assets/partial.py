"""A step over several partitions of which some failed.

One bad class must not cost the others: a step that runs many partitions (a range run) catches each
partition's own error, goes on with the rest, and ends with ``fail_partially``. The partitions that
finished are recorded as materialized — a rerun then runs only the failed ones — and the step fails
with a message that names each failed partition and its error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn

import dagster as dg

SHOWN = 3  # failures named in the step's one-line description; the metadata lists them all


def fail_partially(
    context: dg.AssetExecutionContext,
    finished: Mapping[str, Mapping],
    failures: Mapping[str, str],
    noun: str = "partitions",
) -> NoReturn:
    """Record ``finished`` ({partition key: metadata}) as materialized and fail the step naming ``failures``
    ({partition key: error})."""
    for key, metadata in finished.items():
        context.log_event(dg.AssetMaterialization(context.asset_key, partition=key, metadata=dict(metadata)))
    named = "; ".join(f"{key}: {error}" for key, error in list(failures.items())[:SHOWN])
    raise dg.Failure(
        description=f"{len(failures)} of {len(context.partition_keys)} {noun} failed, the others are "
        f"materialized: {named}" + (" …" if len(failures) > SHOWN else ""),
        metadata={"failed": dg.MetadataValue.md("\n".join(f"- `{key}`: {error}" for key, error in failures.items()))},
    )
