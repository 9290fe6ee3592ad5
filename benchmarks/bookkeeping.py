"""Orchestration bookkeeping at the paper's scale: ``python -m benchmarks.bookkeeping``.

The paper's grid is about 1,000 classes × 14 methods. This benchmark registers ``--classes`` dynamic
class partitions and materializes ``--classes`` × ``--methods`` class × method partitions of trivial
work (each writes one row to its own Parquet table file, as the real assets do), then one per-method
asset over them, through the same path as ``augassets benchmark``: the assets' automation condition
(``augassets.conditions.stale_condition``) evaluated with Dagster's public API, the requests grouped
into runs (``plan_runs``; single-run backfill policies), each run executed in process against a
Dagster instance in a throwaway ``DAGSTER_HOME`` (SQLite, Dagster's default; ``--postgres`` for a
throwaway local PostgreSQL, started and stopped as the scale tests do, or ``--postgres-url`` for a
running one).

Printed: wall time, the part spent inside the assets' bodies (the "work"), partitions per second, runs
launched, event-log rows, the orchestration share (everything but the work), and the orchestration
time extrapolated to the paper's grid against its compute (about 870 GPU-hours of generation, §4.4).
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import dagster as dg  # at module level: the assets' annotations name it

from benchmarks.run import machine

PAPER_GENERATION_GPU_HOURS = 870.0  # the paper's §4.4: generating the augmentation sets, all methods
PAPER_CLASSES, PAPER_METHODS = 1000, 14


def definitions(classes_name: str, methods: list[str], tables: str, work_seconds: list[float]):
    """A class × method asset of trivial work and a per-method asset reading it, with the product's
    automation condition and backfill policy."""
    import polars as pl

    from augassets.conditions import stale_condition, with_automation
    from augassets.core.warehouse import Warehouse

    method_partitions = dg.StaticPartitionsDefinition(methods)
    grid = dg.MultiPartitionsDefinition(
        {"method": method_partitions, "wnid": dg.DynamicPartitionsDefinition(name=classes_name)}
    )

    @dg.asset(partitions_def=grid, backfill_policy=dg.BackfillPolicy.single_run(), code_version="1")
    def trivial_images(context: dg.AssetExecutionContext) -> None:
        started, db = time.perf_counter(), Warehouse(tables)
        for key in context.partition_keys:
            method, wnid = key.keys_by_dimension["method"], key.keys_by_dimension["wnid"]
            db.replace(
                "trivial_manifest",
                pl.DataFrame({"method": [method], "wnid": [wnid], "images": [1]}),
                where={"method": method, "wnid": wnid},
            )
        work_seconds.append(time.perf_counter() - started)

    @dg.asset(
        partitions_def=method_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        code_version="1",
        deps=[
            dg.AssetDep(
                trivial_images,
                partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="method"),
            )
        ],
    )
    def trivial_scores(context: dg.AssetExecutionContext) -> None:
        started, db = time.perf_counter(), Warehouse(tables)
        for method in context.partition_keys:
            images = db.query("SELECT sum(images) AS n FROM trivial_manifest WHERE method = ?", [method])["n"][0]
            db.replace(
                "trivial_scores", pl.DataFrame({"method": [method], "images": [int(images)]}), where={"method": method}
            )
        work_seconds.append(time.perf_counter() - started)

    condition = stale_condition()
    return dg.Definitions(
        assets=[with_automation(trivial_images, condition), with_automation(trivial_scores, condition)]
    )


def measure(classes: int, methods: int, postgres_url: str = "") -> list[str]:
    from augassets.runner import runs as runner

    with tempfile.TemporaryDirectory() as home:
        os.environ["DAGSTER_HOME"] = home
        storage = f"storage:\n  postgres:\n    postgres_url: {postgres_url}\n" if postgres_url else ""
        Path(home, "dagster.yaml").write_text(storage + "telemetry:\n  enabled: false\n")
        instance = dg.DagsterInstance.get()
        method_keys = [f"method_{i:02d}" for i in range(methods)]
        work: list[float] = []
        defs = definitions("class", method_keys, str(Path(home) / "tables"), work)
        keys = [dg.AssetKey("trivial_images"), dg.AssetKey("trivial_scores")]
        started = time.perf_counter()
        instance.add_dynamic_partitions("class", [f"n{i:08d}" for i in range(classes)])
        registered = time.perf_counter() - started
        cursor, runs, evaluations, evaluation_seconds = None, 0, 0, 0.0
        while True:
            tick = time.perf_counter()
            requested, cursor = runner.evaluate(defs, instance, keys, cursor)
            evaluation_seconds += time.perf_counter() - tick
            evaluations += 1
            if not requested:
                break
            for group in runner.plan_runs(defs, requested):
                runs += len(runner.execute(defs, instance, group, say=lambda *_: None))
        wall = time.perf_counter() - started
        partitions = classes * methods + methods
        done = sum(len(instance.get_materialized_partitions(key)) for key in keys)
        rows = sum(len(instance.all_logs(run.run_id)) for run in instance.get_runs(limit=runs + 10))
        overhead = wall - sum(work)
        per_partition = overhead / partitions
        # The paper's grid: every class × method partition of the image assets (prompts, images, and for the
        # personalized methods fine-tuning and candidates: about 3 per class × method on average), plus per-method ones.
        paper_partitions = PAPER_CLASSES * PAPER_METHODS * 3
        paper_hours = per_partition * paper_partitions / 3600
        return [
            f"bookkeeping: {classes} classes × {methods} methods on {'Postgres' if postgres_url else 'SQLite'}; "
            f"{machine()}",
            f"- partitions materialized: {done} of {partitions} (checked in the instance)",
            f"- wall time: {wall:.1f} s (registering the classes {registered:.1f} s, {evaluations} evaluations "
            f"{evaluation_seconds:.1f} s)",
            f"- inside the assets' bodies (the trivial work: one Parquet file per partition): {sum(work):.1f} s",
            f"- partitions per second: {partitions / wall:.0f}",
            f"- runs launched: {runs}",
            f"- event-log rows: {rows}",
            f"- orchestration share of this run: {overhead / wall:.1%} ({per_partition * 1000:.1f} ms per partition)",
            f"- extrapolated to the paper's grid ({paper_partitions:,} class × method partitions, about 3 "
            f"assets each): "
            f"{paper_hours:.2f} h of orchestration against {PAPER_GENERATION_GPU_HOURS:.0f} GPU-hours of generation = "
            f"{paper_hours / PAPER_GENERATION_GPU_HOURS:.3%}",
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--methods", type=int, default=14)
    parser.add_argument(
        "--postgres-url", default="", help="a Postgres URL for the instance's storage (default: SQLite)"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="start a throwaway PostgreSQL on 127.0.0.1 for the instance"
    )
    args = parser.parse_args()
    if args.postgres:
        from augassets_tests.services import postgres

        with postgres() as url:
            lines = measure(args.classes, args.methods, url)
    else:
        lines = measure(args.classes, args.methods, args.postgres_url)
    for line in lines:
        print(line, flush=True)


if __name__ == "__main__":
    main()
