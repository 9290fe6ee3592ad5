"""Links between partitions in the Dagster UI, for the metadata that shows how a figure was derived:
the results table links each method to its classifier runs, a classifier run to its training set, and
a training set to the class × method image partitions it drew from (with their sample grids)."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote


def partition_url(asset: str, partition: str) -> str:
    """The UI's page of one partition of ``asset`` (relative to the webserver's root)."""
    return f"/assets/{quote(asset)}?view=partitions&partition={quote(str(partition), safe='')}"


def partition_links(asset: str, partitions: Iterable[str]) -> str:
    """Markdown links to each partition's page, separated by commas."""
    return ", ".join(f"[{p}]({partition_url(asset, p)})" for p in partitions)
