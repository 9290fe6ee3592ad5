"""Freshness that includes the state on disk.

Dagster judges an asset partition by its run history: once materialized, it stays materialized. The
files a partition wrote can still go away — an augmentation image deleted by hand, a split export
cleaned up, a table's Parquet file truncated by a full disk or deleted. Each asset declares what it
writes (:func:`outputs`, stored in the asset's metadata, so the UI shows it too); :func:`find_damage`
checks those outputs for every partition Dagster calls materialized, and :func:`damaged_partitions`
names them, one line per asset. Besides existence, the files a partition lists in its table are
compared with the size recorded when they were written (``core.files.with_file_facts``) on every
check, and with their SHA-256 when asked (``augassets benchmark --verify``), so a file cut short or
rewritten in place is found too. Each finding is recorded as an observation of the damaged asset
(the UI shows it on the asset's page). ``augassets benchmark`` requests the damaged partitions with
what the automation conditions request, until they have run; under the daemon the ``damaged_outputs``
sensor (sensors.py) requests them. Their downstream follows as after any update.

A table file that is not whole Parquet is moved aside (``part.parquet.damaged``); its partition's rows
are then missing and the partitions of the asset that wrote them are rebuilt.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from .core.files import safetensors_problem, sha256_file
from .core.store import Store
from .core.warehouse import Warehouse

OUTPUTS_KEY = "augassets/outputs"
DAMAGE_KEY = "augassets/damage"  # an observation's metadata entry: what was found on disk
MAX_LISTED = 3  # missing files named per partition in a reason; the rest are counted


def outputs(
    tables: tuple[str, ...] = (),
    rows: str | None = None,
    paths: dict[str, str] | None = None,
    files: tuple[str, ...] = (),
) -> dict:
    """The metadata entry declaring what an asset writes, checked by :func:`find_damage`.

    ``tables``: catalog tables that must exist once the asset is materialized. ``rows``: a table that
    has at least one row per materialized partition, matched on columns named like the partition
    dimensions (``method``, ``wnid``, ``replicate``). ``paths``: table → column of file paths that
    must exist (the rows of the materialized partitions). ``files``: files or folders in the image
    store, relative to its root, with ``{dimension}`` placeholders for partitioned assets.
    """
    spec = {"tables": list(tables), "rows": rows, "paths": dict(paths or {}), "files": list(files)}
    return {OUTPUTS_KEY: dg.MetadataValue.json(spec)}


@dataclass(frozen=True)
class Damage:
    asset: dg.AssetKey
    partition: str | dg.MultiPartitionKey | None  # None: the whole (unpartitioned) asset
    reason: str

    def __str__(self) -> str:
        return self.reason if self.partition is None else f"{self.partition}: {self.reason}"


def _spec(graph, key: dg.AssetKey) -> dict | None:
    value = graph.get(key).metadata.get(OUTPUTS_KEY)
    return None if value is None else value.value


def _materialized(instance: dg.DagsterInstance, key: dg.AssetKey, partitions_def) -> list:
    """The partition keys Dagster records as materialized (``[None]`` for an unpartitioned asset that is)."""
    if partitions_def is None:
        return [None] if instance.get_latest_materialization_event(key) is not None else []
    # Only the partitions the definition has now: records of removed classes or methods, or of an
    # older partitioning, are history, not outputs to keep.
    current = {str(k): k for k in partitions_def.get_partition_keys(dynamic_partitions_store=instance)}
    return [current[k] for k in sorted(instance.get_materialized_partitions(key)) if k in current]


def _dimensions(partition) -> dict[str, str]:
    if partition is None:
        return {}
    if isinstance(partition, dg.MultiPartitionKey):
        return dict(partition.keys_by_dimension)
    return {"partition": str(partition)}


def _table_rows(db: Warehouse, table: str, columns: list[str]) -> set[tuple] | None:
    """The distinct values of ``columns`` in ``table`` (None: no such table)."""
    if not db.has_table(table):
        return None
    if set(columns) - set(db.query(f'SELECT * FROM "{table}" LIMIT 0').columns):
        return set()  # rows written before the partitioning had these dimensions: none of them is a partition's
    listed = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in columns)
    return set(db.query(f'SELECT DISTINCT {listed} FROM "{table}"').iter_rows())


@dataclass
class Listed:
    """One partition's files in a table's path column: how many, which are missing, and which differ
    from the size (or, when verifying, the SHA-256) recorded when they were written."""

    total: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def _folder_sizes(folder: str) -> dict[str, int]:
    """{file name: size} for a folder, one directory scan (empty where the folder is gone)."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name: entry.stat().st_size for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def _listed_paths(db: Warehouse, table: str, column: str, dimensions: list[str], verify: bool) -> dict[tuple, Listed]:
    """Per partition (the values of ``dimensions``, the table's partition columns): the files
    ``table.column`` lists, those missing and those whose size differs from ``{column}_bytes`` (with
    ``verify``, whose SHA-256 differs from ``{column}_sha256``). Rows written before these columns
    existed are checked for existence only. One query per table and one directory scan per folder
    (with the size of each entry: a stat per file, no read); hashing reads every file."""
    present = set(db.query(f'SELECT * FROM "{table}" LIMIT 0').columns)
    listed = "".join(f'CAST("{c}" AS VARCHAR) AS "{c}", ' for c in dimensions)
    facts = [
        f'"{name}" AS {alias}' if name in present else f"NULL AS {alias}"
        for name, alias in ((f"{column}_bytes", "recorded_bytes"), (f"{column}_sha256", "recorded_sha256"))
    ]
    frame = db.query(f'SELECT {listed}"{column}" AS path, {", ".join(facts)} FROM "{table}"')
    folders: dict[str, dict[str, int]] = {}
    found: dict[tuple, Listed] = {}
    for row in frame.iter_rows():
        *where, path, recorded_bytes, recorded_sha256 = row
        if not path:
            continue
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = _folder_sizes(folder)
        entry = found.setdefault(tuple(where), Listed())
        entry.total += 1
        size = folders[folder].get(name)
        if size is None:
            entry.missing.append(path)
        elif (recorded_bytes is not None and size != recorded_bytes) or (
            verify and recorded_sha256 is not None and sha256_file(path) != recorded_sha256
        ):
            entry.changed.append(path)
    return found


def find_damage(
    graph, instance: dg.DagsterInstance, keys, db: Warehouse, store: Store, verify: bool = False
) -> list[Damage]:
    """Every materialized partition among ``keys`` whose declared outputs are gone or changed, with the
    reason. ``graph``: the definitions' asset graph. ``verify``: compare the recorded SHA-256 of every
    listed file, not only its size."""
    damage: list[Damage] = []
    for key in keys:
        spec = _spec(graph, key)
        if spec is None or not graph.has(key) or not graph.get(key).is_materializable:
            continue
        partitions = _materialized(instance, key, graph.get(key).partitions_def)
        if not partitions:
            continue
        tables = {*spec["tables"], *([spec["rows"]] if spec["rows"] else []), *spec["paths"]}
        absent = sorted(t for t in tables if not db.has_table(t))
        if absent:
            reason = f"table {', '.join(absent)} has no files in {db.url(db.root)}"
            damage.extend(Damage(key, p, reason) for p in partitions)
            continue
        columns = sorted(d for d in _dimensions(partitions[0]) if d != "partition")
        present = _table_rows(db, spec["rows"], columns) if spec["rows"] and columns else None
        # Table paths name the local working copy; a URL store is checked by its files instead.
        listed = (
            {} if store.remote else {(t, c): _listed_paths(db, t, c, columns, verify) for t, c in spec["paths"].items()}
        )
        for partition in partitions:
            dims = _dimensions(partition)
            where = tuple(dims[c] for c in columns)
            if present is not None and where not in present:
                damage.append(Damage(key, partition, f"table {spec['rows']} has no rows for it"))
                continue
            reason = _missing_files(spec, dims, store) or _missing_listed(listed, where)
            if reason:
                damage.append(Damage(key, partition, reason))
    return damage


def _missing_listed(listed: dict, where: tuple) -> str | None:
    for (table, column), per_partition in listed.items():
        entry = per_partition.get(where, Listed())
        for files, what in ((entry.missing, "are missing"), (entry.changed, "differ from what was written")):
            if files:
                named = ", ".join(Path(p).name for p in files[:MAX_LISTED])
                more = f" and {len(files) - MAX_LISTED} more" if len(files) > MAX_LISTED else ""
                return f"{len(files)} of {entry.total} files in {table}.{column} {what} ({named}{more})"
    return None


def _missing_files(spec: dict, dims: dict[str, str], store: Store) -> str | None:
    for pattern in spec["files"]:
        fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name}
        if not fields <= set(dims):
            continue
        relative = pattern.format(**dims)
        if not store.exists(*relative.split("/")):
            return f"{relative} is missing from the image store"
        if relative.endswith(".safetensors") and not store.remote:
            problem = safetensors_problem(store.path(*relative.split("/")))
            if problem:
                return f"{relative} is damaged ({problem})"
    return None


def record_damage(instance: dg.DagsterInstance, items: list[Damage]) -> None:
    """Each finding as an observation of the damaged asset (partition), so the UI's asset page shows
    what was found on disk and when, beside the materialization that wrote it."""
    for item in items:
        instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key=item.asset,
                partition=None if item.partition is None else str(item.partition),
                description="outputs damaged on disk; the partition is rebuilt",
                metadata={DAMAGE_KEY: item.reason},
            )
        )


def damaged_partitions(
    defs: dg.Definitions, instance: dg.DagsterInstance, keys, resources: dict, say=print, verify: bool = False
) -> dict[dg.AssetKey, set]:
    """The partitions among ``keys`` whose outputs are damaged, as {key: partitions} ({None} for an
    unpartitioned asset), saying what is missing or changed, one line per asset, and recording each
    finding on its asset (:func:`record_damage`). ``resources``: the definitions' resources
    (``warehouse`` and ``image_store`` are read). ``verify``: compare hashes, not only sizes."""
    db, store = resources["warehouse"].get(), resources["image_store"].store()
    for moved in db.check_files():
        say(f"- damaged table file: {moved}")
    found: dict[dg.AssetKey, list[Damage]] = {}
    items = find_damage(defs.resolve_asset_graph(), instance, keys, db, store, verify)
    record_damage(instance, items)
    for item in items:
        found.setdefault(item.asset, []).append(item)
    for key, items in found.items():
        shown = "; ".join(str(d) for d in items[:MAX_LISTED]) + (
            f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
        )
        count = "the asset" if items[0].partition is None else f"{len(items)} partition{'s' * (len(items) != 1)}"
        say(f"- {key.to_user_string()}: outputs damaged on disk, rebuilding {count} — {shown}")
    return {key: {d.partition for d in items} for key, items in found.items()}
