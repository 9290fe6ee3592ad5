"""``augassets``: run the benchmark headless, or open the Dagster UI on the same instance.

``augassets benchmark`` materializes, stage by stage, every asset the profile's methods need and prints
the results table. A stage whose partitions were all materialized with the current code version after
their upstream stage is skipped, so a rerun with nothing changed takes seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import dagster as dg

from .build import build_defs
from .core.methods import IMAGES, RETRIEVAL, runnable_methods
from .core.report import results_report
from .core.warehouse import Warehouse
from .profiles import PROFILE_ENV, Profile, get_profile

# The backfill policy and partition mapping APIs are marked beta; the notice adds nothing to a run log.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

REPO_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
# Dagster's documented run tags for a run over a range of partition keys (one run, many partitions).
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


def ensure_dagster_home(profile: Profile) -> Path:
    """The profile's Dagster home, holding a copy of the repository's ``dagster.yaml``."""
    home = Path(os.environ.get("DAGSTER_HOME") or profile.home / "dagster")
    home.mkdir(parents=True, exist_ok=True)
    if REPO_DAGSTER_YAML.is_file() and not (home / "dagster.yaml").exists():
        shutil.copyfile(REPO_DAGSTER_YAML, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@dataclass
class Stage:
    """One run of a job over some partitions (None: an unpartitioned job). Partition keys may be a
    function of the warehouse, for class partitions known only once the catalog exists."""

    job_name: str
    asset_name: str
    partition_keys: list[str] | Callable[[Warehouse], list[str]] | None
    upstream: list[str]  # asset names whose latest materialization must be older


def contiguous_ranges(all_keys: list[str], wanted: list[str]) -> list[tuple[str, str]]:
    """Group ``wanted`` into runs of consecutive keys of ``all_keys`` (one run per range)."""
    positions = sorted(all_keys.index(k) for k in wanted)
    ranges, start = [], None
    for i, pos in enumerate(positions):
        if start is None:
            start = pos
        if i + 1 == len(positions) or positions[i + 1] != pos + 1:
            ranges.append((all_keys[start], all_keys[pos]))
            start = None
    return ranges


FOUNDATION_STAGES = [
    Stage("build_foundation", "fidelity_classifier", None, ["dataset_splits"]),
    Stage("build_foundation", "web_pool", None, ["dataset_splits"]),
    Stage("build_foundation", "clip_model", None, ["web_pool"]),
    Stage("build_foundation", "pool_index", None, ["clip_model", "web_pool"]),
    Stage("build_foundation", "vae", None, ["web_pool"]),
    Stage("build_foundation", "unet", None, ["vae", "clip_model", "web_pool"]),
    Stage("build_foundation", "judge_images", None, ["dataset_splits", "web_pool"]),
    Stage("build_foundation", "fidelity_judge", None, ["judge_images", "fidelity_classifier"]),
    Stage("build_foundation", "diffusion_model", None, ["vae", "unet", "clip_model", "pool_index", "fidelity_judge"]),
    # A calibration figure, not an input of any method: `augassets foundation` builds it, the benchmark does not.
    Stage("build_foundation", "domain_oracle", None, ["web_pool", "dataset_splits"]),
]


def plan(profile: Profile) -> list[Stage]:
    """The stages the profile's results table needs, in data-flow order."""
    methods = runnable_methods(profile.methods)
    keys = [m.key for m in methods]
    image_methods = [m.key for m in methods if m.extra_images == IMAGES]
    generation = any(m.resample for m in methods)
    # Retrieval needs the diffusion model too: its safety checker screens retrieved images.
    needs_diffusion = generation or any(m.builder == RETRIEVAL for m in methods)
    replicates = [str(r) for r in range(profile.classifier.replicates)]

    def class_keys(db: Warehouse) -> list[str]:
        wnids = db.query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"].to_list()
        return [f"{m}|{w}" for m in image_methods for w in wnids]

    stages = [
        Stage("prepare_data", "class_catalog", None, []),
        Stage("prepare_data", "dataset_splits", None, ["class_catalog"]),
    ]
    if image_methods:
        if profile.world:
            needed = {"web_pool", "clip_model", "pool_index", "fidelity_classifier", "judge_images", "fidelity_judge"}
            needed |= {"vae", "unet", "diffusion_model"} if needs_diffusion else set()
            stages += [s for s in FOUNDATION_STAGES if s.asset_name in needed]
        stages += [
            Stage("augment_classes", "class_prompts", class_keys, ["class_catalog", "clip_model", "dataset_splits"]),
            Stage("augment_classes", "augmentation_images", class_keys,
                  ["class_prompts", "pool_index", "dataset_splits"] + (["diffusion_model"] if needs_diffusion else [])),
            Stage("collect", "excluded_classes", None, ["augmentation_images"]),
        ]
        stages.append(Stage("collect", "class_fidelity", None, ["augmentation_images", "fidelity_classifier"] + (["fidelity_judge"] if profile.world else [])))
    stages += [
        Stage("build_augmented_datasets", "augmented_datasets", keys, ["dataset_splits"] + (["excluded_classes"] if image_methods else [])),
        Stage("train_classifiers", "classifier_scores", [f"{m}|{r}" for m in keys for r in replicates], ["augmented_datasets"]),
        Stage("report", "results_table", None, ["classifier_scores"]),
    ]
    if image_methods:
        stages += [
            Stage("collect", "reference_hashes", None, ["dataset_splits"]),
            Stage("collect", "leak_threshold", None, ["reference_hashes"] + (["web_pool"] if profile.duplicates.calibrate_on_planted else [])),
            Stage("augment_classes", "duplicate_report", class_keys, ["augmentation_images", "reference_hashes", "leak_threshold"]),
            Stage("collect", "duplicate_summary", None, ["duplicate_report", "leak_threshold"]),
        ]
    return stages


def plan_foundation(profile: Profile) -> list[Stage]:
    """Catalog and splits, then the mini world's pool, CLIP, index and Stable Diffusion."""
    if profile.world is None:
        raise SystemExit(f"profile {profile.name} has no mini world: its pool, CLIP, index and SD are external assets")
    return plan(profile)[:2] + FOUNDATION_STAGES


def _latest(instance, asset_name: str, partition_keys: list[str] | None):
    """The latest materialization event of each requested partition (key None: unpartitioned)."""
    key = dg.AssetKey(asset_name)
    if partition_keys is None:
        event = instance.get_latest_materialization_event(key)
        return {None: event} if event else {}
    found = {}
    for partition in partition_keys:
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1)
        if records.records:
            found[partition] = records.records[0].event_log_entry
    return found


def stage_is_fresh(instance, defs, stage: Stage) -> bool:
    wanted = stage.partition_keys if stage.partition_keys is not None else [None]
    latest = _latest(instance, stage.asset_name, stage.partition_keys)
    if any(p not in latest for p in wanted):
        return False
    current = defs.resolve_assets_def(dg.AssetKey(stage.asset_name)).code_versions_by_key[dg.AssetKey(stage.asset_name)]
    if any(e.asset_materialization.tags.get("dagster/code_version") != current for e in latest.values()):
        return False
    oldest = min(e.timestamp for e in latest.values())
    for upstream in stage.upstream:
        record = instance.get_latest_materialization_event(dg.AssetKey(upstream))
        if record is not None and record.timestamp > oldest:  # None: an external asset (real profiles)
            return False
    return True


def run_stage(instance, defs, stage: Stage, say) -> None:
    """Execute one stage in process: one run per contiguous range of its partitions, in the order the
    partitions definition lists its keys (whatever order its dimensions sort in)."""
    job = defs.resolve_job_def(stage.job_name)
    selection = [dg.AssetKey(stage.asset_name)]
    if stage.partition_keys is None:
        runs = [(stage.asset_name, {})]
    else:
        all_keys = job.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
        runs = [
            (f"{stage.asset_name} [{start} … {end}]", {PARTITION_RANGE_START_TAG: start, PARTITION_RANGE_END_TAG: end})
            for start, end in contiguous_ranges(all_keys, stage.partition_keys)
        ]
    for label, tags in runs:
        if tags:
            say(f"  {label}")
        result = job.execute_in_process(instance=instance, asset_selection=selection, tags=tags, raise_on_error=False)
        if not result.success:
            errors = [event.step_failure_data.error.message.strip() for event in result.all_events if event.is_step_failure]
            raise SystemExit(f"{label} failed: {' | '.join(errors) or 'see the run in the UI'} (run {result.run_id}; `augassets ui` shows it)")


def materialize(profile: Profile, stages: list[Stage], force: bool = False, say=print) -> None:
    """Run each stage that is not up to date (a stage is stale when an upstream asset was materialized
    after it, so a rebuilt stage makes its downstream stages rebuild)."""
    ensure_dagster_home(profile)
    defs = build_defs(profile)
    instance = dg.DagsterInstance.get()
    say(f"augassets: profile {profile.name}, state in {profile.home}")
    db = Warehouse(profile.home / "catalog.duckdb")
    for stage in stages:
        if callable(stage.partition_keys):
            stage = replace(stage, partition_keys=stage.partition_keys(db))
        if not force and stage_is_fresh(instance, defs, stage):
            say(f"- {stage.asset_name}: up to date")
            continue
        stage_started = time.perf_counter()
        say(f"- {stage.asset_name}: materializing")
        run_stage(instance, defs, stage, say)
        say(f"  done in {time.perf_counter() - stage_started:.1f} s")


def benchmark(profile: Profile, force: bool = False, say=print) -> str:
    """Materialize what the profile's results table needs and return the table as markdown."""
    started = time.perf_counter()
    materialize(profile, plan(profile), force, say)
    table = results_report(Warehouse(profile.home / "catalog.duckdb"))
    say(f"\nResults ({profile.name}, {time.perf_counter() - started:.0f} s):\n\n{table}\n")
    return table


def ui(profile: Profile, port: int, host: str) -> int:
    home = ensure_dagster_home(profile)
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    command = ["dagster", "dev", "-h", host, "-p", str(port)]
    command += ["-w", str(workspace)] if workspace.is_file() else ["-m", "augassets.definitions"]
    print(f"Dagster UI for profile {profile.name} on http://{host}:{port} (DAGSTER_HOME={home})")
    return subprocess.call(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="augassets", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help=f"profile name (default: ${PROFILE_ENV} or mini)")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("benchmark", help="materialize the benchmark headless and print the results table")
    bench.add_argument("--force", action="store_true", help="rebuild every stage even if it is up to date")
    found = sub.add_parser("foundation", help="materialize the mini world's pool, CLIP, KNN index and Stable Diffusion")
    found.add_argument("--force", action="store_true", help="rebuild every stage even if it is up to date")
    ui_parser = sub.add_parser("ui", help="open the Dagster UI (dagster dev) on this profile's instance")
    ui_parser.add_argument("--port", type=int, default=3000)
    ui_parser.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Per-checkpoint "Loading weights" / "Loading pipeline components" bars drown the run log.
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    if args.profile:
        os.environ[PROFILE_ENV] = args.profile
    profile = get_profile()
    if args.command == "benchmark":
        benchmark(profile, force=args.force)
        return 0
    if args.command == "foundation":
        started = time.perf_counter()
        materialize(profile, plan_foundation(profile), force=args.force)
        print(f"foundation ready in {time.perf_counter() - started:.0f} s: {profile.home / 'store' / 'models'}")
        return 0
    return ui(profile, args.port, args.host)


if __name__ == "__main__":
    sys.exit(main())
