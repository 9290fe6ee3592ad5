"""The headless runner's plan and runs: what ``augassets benchmark`` / ``foundation`` materialize, and how.

The command decides what to run by evaluating the assets' automation conditions (``conditions.py``)
through Dagster's public API (``dg.evaluate_automation_conditions``) — the same conditions the
daemon's ``scheduled_backfill`` sensor evaluates (sensors.py). The evaluation keeps a cursor (what
it saw last time), stored beside the Dagster instance, so "changed since" means since the last
evaluation of that home.

Requested partitions become runs: assets requested together with the same partitions run together
(one run over many partitions, as the backfill policies allow), in the graph's order (with worker
processes, a round's groups over several partitions at once: ``execute_on_workers``); an asset with
an upstream that this round will change outside its run waits for a later round, and the command
keeps it pending until it has run (Dagster counts a requested partition as handled, so a later
evaluation need not ask for it again) — so nothing runs twice and nothing is dropped. The pending
partitions are written beside the cursor before anything runs and rewritten as runs finish: a
command that is killed or fails leaves them for the next command, which runs them whatever the
conditions say (the cursor already holds the change that requested them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from ..core.files import write_bytes_atomic
from ..tags import ASSETS_TAG, CHUNK_BY_TAG, PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG
from .failures import RunFailed, failure_message, step_errors
from .workers import Chunk, Workers, split_guided

CURSOR_FILE = "automation_cursor.json"
PENDING_FILE = "automation_pending.json"  # requested partitions not yet run: {asset key: [partition key or null]}


@dataclass(frozen=True)
class RunGroup:
    """Assets requested together over the same partitions (``None``: unpartitioned)."""

    keys: tuple[dg.AssetKey, ...]
    partitions: frozenset | None

    @property
    def names(self) -> list[str]:
        return [key.to_user_string() for key in self.keys]


def load_cursor(folder: Path, say=print):
    """The automation cursor the last command on this home saved (None: none yet). A cursor this
    Dagster cannot read (written by another version, or damaged) is moved aside and the evaluation
    starts fresh, which says so: a fresh cursor asks again for whatever is missing or whose code
    version changed, and nothing that is up to date."""
    path = folder / CURSOR_FILE
    if not path.is_file():
        return None
    try:
        return dg.deserialize_value(path.read_text())
    except Exception as error:  # Dagster's serdes raises its own errors, and JSON's, for what it cannot read
        aside = path.with_name(path.name + ".unreadable")
        path.replace(aside)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        say(
            f"- the automation cursor {path} could not be read ({type(error).__name__}: {first}); moved to "
            f"{aside.name}, evaluating from a fresh cursor"
        )
        return None


def save_cursor(folder: Path, cursor) -> None:
    write_bytes_atomic(dg.serialize_value(cursor).encode(), folder / CURSOR_FILE)


def load_pending(folder: Path, current: dict[dg.AssetKey, set]) -> tuple[dict[dg.AssetKey, set], dict[str, list]]:
    """What an earlier command requested and did not run: (those of the partitions in ``current``
    — every partition of the selected assets, {None} when unpartitioned — and the rest as stored,
    for a later command whose selection or methods include them)."""
    path = folder / PENDING_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    usable: dict[dg.AssetKey, set] = {}
    aside: dict[str, list] = {}
    for name, partitions in stored.items():
        key = dg.AssetKey.from_user_string(name)
        by_name = {None if p is None else str(p): p for p in current.get(key, ())}
        found = {by_name[p] for p in partitions if p in by_name}
        if found:
            usable[key] = found
        rest = [p for p in partitions if p not in by_name]
        if rest:
            aside[name] = rest
    return usable, aside


def save_pending(folder: Path, pending: dict[dg.AssetKey, set], aside: dict[str, list]) -> None:
    """Write ``pending`` and ``aside`` (see :func:`load_pending`) atomically; nothing left: the file goes."""
    stored = {name: list(partitions) for name, partitions in aside.items()}
    for key, partitions in pending.items():
        names = {None if p is None else str(p) for p in partitions} | set(stored.get(key.to_user_string(), ()))
        if names:
            stored[key.to_user_string()] = sorted(names, key=lambda p: p or "")
    path = folder / PENDING_FILE
    if stored:
        write_bytes_atomic(json.dumps(stored, indent=1).encode(), path)
    else:
        path.unlink(missing_ok=True)


def evaluate(defs: dg.Definitions, instance: dg.DagsterInstance, keys: Iterable[dg.AssetKey], cursor=None):
    """The conditions of ``keys`` evaluated now: ({key: requested partitions}, new cursor)."""
    keys = list(keys)
    result = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets(*keys), cursor=cursor
    )
    requested = {key: set(result.get_requested_partitions(key)) for key in keys if result.get_num_requested(key)}
    return requested, result.cursor


def plan_runs(defs: dg.Definitions, requested: dict[dg.AssetKey, set]) -> list[RunGroup]:
    """The runs of one evaluation, in the graph's order: requested assets grouped by partitions
    definition and requested partitions. An asset waits for a later evaluation when one of its
    upstream assets outside its group is, or lies downstream of, a requested asset: that upstream
    will change in this round; the caller keeps the asset's partitions pending and runs them in a
    later round (so nothing runs twice and nothing reads inputs about to change). The topologically
    first requested asset never waits, so every evaluation makes progress."""
    graph = defs.resolve_asset_graph()
    order = {key: i for i, key in enumerate(graph.toposorted_asset_keys)}
    changing = dg.AssetSelection.assets(*requested).downstream().resolve(graph)  # requested and all below them

    def signature(key):
        partitions_def = graph.get(key).partitions_def
        return (repr(partitions_def), frozenset(str(p) for p in requested[key]) if partitions_def is not None else None)

    groups: dict[tuple, list[dg.AssetKey]] = {}
    for key in sorted(requested, key=order.__getitem__):
        upstream_changing = graph.get_ancestor_asset_keys(key) & changing
        if all(up in requested and signature(up) == signature(key) for up in upstream_changing):
            groups.setdefault(signature(key), []).append(key)
    return [
        RunGroup(tuple(keys), frozenset(requested[keys[0]]) if sig[1] is not None else None)
        for sig, keys in groups.items()
    ]


def contiguous_ranges(all_keys: list[str], wanted: Iterable[str]) -> list[tuple[str, str]]:
    """Group ``wanted`` into runs of consecutive keys of ``all_keys`` (one run per range)."""
    index = {key: i for i, key in enumerate(all_keys)}
    positions = sorted(index[k] for k in wanted)
    ranges, start = [], None
    for i, pos in enumerate(positions):
        if start is None:
            start = pos
        if i + 1 == len(positions) or positions[i + 1] != pos + 1:
            ranges.append((all_keys[start], all_keys[pos]))
            start = None
    return ranges


def first_dimension_rows(partitions_def: dg.MultiPartitionsDefinition, keys: list[str]) -> list[list[str]]:
    """``keys`` (consecutive) cut where the first dimension's value changes."""
    outer = partitions_def.partitions_defs[0].name
    rows: list[list[str]] = []
    for key in keys:
        value = partitions_def.get_partition_key_from_str(key).keys_by_dimension[outer]
        if rows and partitions_def.get_partition_key_from_str(rows[-1][0]).keys_by_dimension[outer] == value:
            rows[-1].append(key)
        else:
            rows.append([key])
    return rows


def box_ranges(partitions_def: dg.PartitionsDefinition, keys: list[str], store=None) -> list[tuple[str, str]]:
    """``keys`` (consecutive in ``partitions_def``'s order) as ranges that each cover exactly their keys.
    A range of a two-dimensional definition is a box, every key between its ends in each dimension,
    so a run of the consecutive keys "a|y, a|z, b|x" must be cut: "a|y … a|z" and "b|x … b|x"
    (not "a|y … b|x", which is a|y, b|y). Keys are ordered by the first dimension, then the second:
    one first-dimension value's keys are a box, and so are whole rows between a partial first and last."""
    if not keys:
        return []
    if not isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return [(keys[0], keys[-1])]  # one dimension: a range is its keys in order

    def covers(piece: list[str]) -> bool:
        inside = partitions_def.get_partition_keys_in_range(
            dg.PartitionKeyRange(piece[0], piece[-1]), dynamic_partitions_store=store
        )
        return sorted(str(k) for k in inside) == sorted(piece)

    if covers(keys):
        return [(keys[0], keys[-1])]
    rows = first_dimension_rows(partitions_def, keys)
    pieces = (
        [rows[0]]
        + ([[k for row in rows[1:-1] for k in row]] if len(rows) > 2 else [])
        + ([rows[-1]] if len(rows) > 1 else [])
    )
    merged: list[list[str]] = []
    for piece in pieces:  # each piece is a box; a partial first or last row joins the whole rows when that is one too
        if merged and covers(merged[-1] + piece):
            merged[-1] = merged[-1] + piece
        else:
            merged.append(piece)
    return [(piece[0], piece[-1]) for piece in merged]


def execute(
    defs: dg.Definitions, instance: dg.DagsterInstance, group: RunGroup, say: Callable[[str], None]
) -> list[str]:
    """Materialize ``group`` in this process: one run per contiguous range of its partitions, in the
    order the partitions definition lists its keys (whatever order its dimensions sort in). Returns run
    ids. (With worker processes, groups over several partitions go to ``execute_on_workers``.)"""
    job = defs.resolve_implicit_job_def_def_for_assets(list(group.keys))
    base_tags = {ASSETS_TAG: ",".join(group.names)}
    if group.partitions is None:
        runs = [(", ".join(group.names), base_tags)]
    else:
        runs = _chunk_runs(defs, instance, group, 1)
    run_ids = []
    for label, tags in runs:
        say(f"  {label}")
        result = job.execute_in_process(
            instance=instance, asset_selection=list(group.keys), tags=tags, raise_on_error=False
        )
        run_ids.append(result.run_id)
        if not result.success:
            raise RunFailed(failure_message(label, step_errors(result), result.run_id))
    return run_ids


@dataclass(frozen=True)
class GroupOutcome:
    """How one group of :func:`execute_on_workers` ended: its run ids, and ``error`` (None: succeeded)."""

    group: RunGroup
    run_ids: list[str]
    error: str | None


def execute_on_workers(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    groups: Sequence[RunGroup],
    say: Callable[[str], None],
    workers: Workers,
) -> list[GroupOutcome]:
    """Materialize partitioned ``groups`` that do not depend on each other (the groups of one
    evaluation, ``plan_runs``) at once: every group cut into chunks (``partition_ranges``), all the
    chunks in one queue for the worker processes, so that a worker that ends one group's last chunk
    takes another group's instead of waiting. Groups cut into fewer (so larger) chunks go first — a
    method's whole fine-tuning started last would leave the other worker idle while it runs. A group
    whose chunks all succeeded then has its asset checks run once in this process (each reads the
    whole asset). Returns one outcome per group, in ``groups``' order; a failed group does not stop
    the others."""
    cut = [_chunk_runs(defs, instance, group, workers.count) for group in groups]
    order = sorted(range(len(groups)), key=lambda i: len(cut[i]))  # stable: the graph's order among equals
    chunks, owner = [], []
    for i in order:
        chunks += [Chunk(label, tuple(groups[i].names), tags) for label, tags in cut[i]]
        owner += [i] * len(cut[i])
    what = f"{len(groups)} groups" if len(groups) > 1 else ", ".join(groups[0].names)
    say(f"  {len(chunks)} chunks of {what} on {workers.count} worker processes")
    results = workers.run(chunks, say)
    outcomes = []
    graph_checks = defs.resolve_asset_graph().asset_check_keys
    for i, group in enumerate(groups):
        mine = [result for result, j in zip(results, owner) if j == i]
        failed = [r for r in mine if not r.success]
        run_ids = [r.run_id for r in mine if r.run_id]
        if failed:
            errors = sorted({error for r in failed for error in r.errors})
            outcomes.append(
                GroupOutcome(
                    group,
                    run_ids,
                    failure_message(
                        failed[0].label,
                        errors,
                        failed[0].run_id or "not started",
                        f"; {len(failed)} of {len(mine)} chunks failed",
                    ),
                )
            )
            continue
        checks = {key for key in graph_checks if key.asset_key in set(group.keys)}
        error = None
        if checks:  # the chunks ran without them: each reads the whole asset
            label = f"checks of {', '.join(group.names)}"
            say(f"  {label}")
            job = defs.resolve_implicit_job_def_def_for_assets(list(group.keys))
            result = job.get_subset(asset_check_selection=checks).execute_in_process(
                instance=instance, tags={ASSETS_TAG: ",".join(group.names)}, raise_on_error=False
            )
            run_ids.append(result.run_id)
            if not result.success:
                error = failure_message(label, step_errors(result), result.run_id)
        outcomes.append(GroupOutcome(group, run_ids, error))
    return outcomes


def _chunk_runs(
    defs: dg.Definitions, instance: dg.DagsterInstance, group: RunGroup, workers: int
) -> list[tuple[str, dict[str, str]]]:
    """The (label, run tags) of a partitioned ``group``'s runs: one per range of ``partition_ranges``."""
    base_tags = {ASSETS_TAG: ",".join(group.names)}
    return [
        (
            f"{', '.join(group.names)} [{start} … {end}]",
            {**base_tags, PARTITION_RANGE_START_TAG: start, PARTITION_RANGE_END_TAG: end},
        )
        for start, end in partition_ranges(defs, instance, group, workers)
    ]


def partition_ranges(
    defs: dg.Definitions, instance: dg.DagsterInstance, group: RunGroup, workers: int = 1
) -> list[tuple[str, str]]:
    """The runs of a partitioned ``group``, as partition ranges Dagster reads as exactly the requested
    keys (``box_ranges``): one per contiguous stretch in one process; with ``workers`` > 1, cut into
    chunks of decreasing size (``split_guided``), or one per first-dimension value for an asset
    tagged ``CHUNK_BY_TAG``."""
    partitions_def = defs.resolve_asset_graph().get(group.keys[0]).partitions_def
    all_keys = [str(k) for k in partitions_def.get_partition_keys(dynamic_partitions_store=instance)]
    index = {key: i for i, key in enumerate(all_keys)}
    spans = [
        all_keys[index[start] : index[end] + 1]
        for start, end in contiguous_ranges(all_keys, (str(p) for p in group.partitions))
    ]
    if workers > 1 and len(group.partitions) > 1:
        if _chunk_by(defs, group.keys, partitions_def):  # the work is per first-dimension value: one chunk each
            spans = [row for span in spans for row in first_dimension_rows(partitions_def, span)]
        else:
            spans = [chunk for span in spans for chunk in split_guided(span, workers)]
    return [box for span in spans for box in box_ranges(partitions_def, span, instance)]


def _chunk_by(defs: dg.Definitions, keys: Sequence[dg.AssetKey], partitions_def) -> bool:
    """Whether an asset of the group computes once per first-dimension value (its ``CHUNK_BY_TAG``)."""
    graph = defs.resolve_asset_graph()
    named = {graph.get(key).tags.get(CHUNK_BY_TAG) for key in keys} - {None}
    if not named:
        return False
    first = partitions_def.partitions_defs[0].name if isinstance(partitions_def, dg.MultiPartitionsDefinition) else None
    if named != {first}:
        raise ValueError(
            f"{CHUNK_BY_TAG} of {', '.join(k.to_user_string() for k in keys)} names {sorted(named)}: only the first "
            f"partition dimension ({first}) can be a unit of work"
        )
    return True
