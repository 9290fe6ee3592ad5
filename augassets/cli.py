"""``augassets``: run the benchmark headless, or open the Dagster UI on the same instance.

``augassets benchmark`` materializes every asset of the profile's definitions that is stale by the
assets' own automation conditions (missing, code version changed, upstream updated — the conditions
the Dagster daemon evaluates too) and prints the results report. A rerun with nothing changed
launches no run and takes seconds. ``augassets ui`` opens the Dagster UI and ``augassets daemon``
runs the daemon (the ``scheduled_backfill`` and ``new_classes`` sensors) on the same instance.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import dagster as dg

from . import executors
from .build import benchmark_keys, build_defs
from .core.files import write_bytes_atomic
from .core.markdown import results_report
from .core.warehouse import Warehouse
from .instance import ensure_dagster_home
from .profiles import PROFILE_ENV, STUDY_ENV, WORLD_ENV, Profile, get_profile, study_toml
from .runner.command import materialize

# The backfill policy and partition mapping APIs are marked beta; the notice adds nothing to a run log.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def foundation_keys(defs: dg.Definitions) -> list[dg.AssetKey]:
    """The mini world's foundation (group ``foundation`` and the fidelity classifier) and what it reads."""
    graph = defs.resolve_asset_graph()
    selection = (dg.AssetSelection.groups("foundation") | dg.AssetSelection.assets("fidelity_classifier")).upstream()
    chosen = selection.resolve(graph)
    return [key for key in graph.toposorted_asset_keys if key in chosen and graph.get(key).is_executable]


def benchmark(profile: Profile, force: bool = False, say=print, verify: bool = False) -> str:
    """Materialize what the profile's results table needs and return the table as markdown."""
    started = time.perf_counter()
    materialize(profile, benchmark_keys, force, say, verify)
    table = results_report(Warehouse(profile.tables), profile.paper_reference, profile.report_settings)
    say(f"\nResults ({profile.name}, {time.perf_counter() - started:.0f} s):\n\n{table}\n")
    say(machine_line(profile) + "\n")
    report = Path(profile.store_root) / "reports" / "report.html"
    if report.is_file():
        say(f"Report with figures: {report}\n")
    return table


def machine_line(profile: Profile) -> str:
    """Which machine the numbers above come from, and the fingerprint of its training kernels
    (``core.classifier.training_machine``): a table is reproduced to the digit only where the
    fingerprint is the same."""
    import torch

    from .core.classifier import training_machine
    from .resources import default_resources

    spec = replace(profile.classifier, device=default_resources(profile)["compute"].device)
    machine = training_machine(spec, profile.partition_threads or profile.torch_threads or torch.get_num_threads())
    if not machine:
        return f"Machine: classifiers on {spec.device} (no CPU kernel fingerprint)"
    threads = machine["threads"]
    return (
        f"Machine: {machine['machine']}; training-kernel fingerprint {machine['training_kernel_fingerprint']} "
        f"at {threads} thread{'s' if threads > 1 else ''} — a table repeats to the digit only where the fingerprint "
        "is the same (docs/running.md, Reproducible numbers)"
    )


CALIBRATION_FIGURES = {  # figures of the world a manifest records beside its files: asset → metadata keys
    "clip_model": ("zero_shot_top1", "zero_shot_top1_ensemble"),
    "fidelity_judge": ("judge_top1_test", "judge_top1_holdout_web"),
    "domain_transfer": ("domain_transfer_ratio",),
    "diffusion_fidelity": ("class_fidelity", "relative_class_fidelity", "target_recognizability"),
}


def _plain(value):
    """A metadata value as JSON can hold it (numbers, strings, lists of numbers), or None."""
    value = getattr(value, "value", value)
    if isinstance(value, (int, float, str)) or (
        isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
    ):
        return value
    return None


def export_world(profile: Profile, name: str, say=print) -> Path:
    """Copy the world this home trained (``augassets foundation --rebuild``) into the package as the
    shipped world ``name``, with its manifest. Every shipped asset must have been trained here by the
    current definitions; the figures of its materialization go into the manifest."""
    import datetime

    from .assets.foundation import SHIPPED_FILES, lineage_versions
    from .core.files import atomic_folder
    from .core.world import STORED_DTYPE, export_asset, world_folder, write_manifest

    if profile.world is None:
        raise SystemExit(f"profile {profile.name} has no mini world to export")
    ensure_dagster_home(profile)
    defs = build_defs(profile, daemon=False)
    graph = defs.resolve_asset_graph()
    instance = dg.DagsterInstance.get()

    def latest(asset: str):
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return event.asset_materialization if event else None

    for asset in SHIPPED_FILES:
        made = latest(asset)
        version = graph.get(dg.AssetKey(asset)).code_version
        if (
            made is None
            or _plain(made.metadata.get("source")) != "trained here"
            or made.tags.get("dagster/code_version") != version
        ):
            raise SystemExit(
                f"{asset}: no materialization trained here by the current definitions (code version {version}) on "
                f"{profile.home}; train the world first: AUGASSETS_PROFILE={profile.name} augassets foundation "
                f"--rebuild"
            )
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:  # no git on this machine: the manifest says so
        commit = ""
    world = profile.world
    manifest = {
        "world": name,
        "profile": profile.name,
        "command": f"AUGASSETS_PROFILE={profile.name} augassets foundation --rebuild"
        f" && augassets world export --name {name}",
        "commit": commit or "unknown",
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "stored_dtype": STORED_DTYPE,
        "settings": {
            "target": repr(profile.dataset.target),
            "split": repr(profile.split),
            "pool": repr(world.pool),
            "clip": repr(world.clip),
            "diffusion": repr(world.diffusion),
            "classifier": repr(profile.classifier),
            "judge": repr(profile.judge_classifier),
        },
        "calibration": {
            f"{asset}.{key}": _plain(latest(asset).metadata[key])
            for asset, keys in CALIBRATION_FIGURES.items()
            if latest(asset)
            for key in keys
            if key in latest(asset).metadata
        },
        "assets": {},
    }
    store = Path(profile.store_root)
    final = world_folder(name)
    with atomic_folder(final) as tmp:
        for asset, parts in SHIPPED_FILES.items():
            figures = {
                k: _plain(v) for k, v in latest(asset).metadata.items() if k != "source" and _plain(v) is not None
            }
            manifest["assets"][asset] = export_asset(
                asset, store.joinpath(*parts), tmp, lineage_versions(graph, dg.AssetKey(asset)), figures
            )
            say(f"- {asset}: {len(manifest['assets'][asset]['files'])} files")
        write_manifest(tmp, manifest)
    total = sum(f["bytes"] for entry in manifest["assets"].values() for f in entry["files"].values())
    say(f"shipped world {name}: {total / 1e6:.1f} MB in {final}")
    return final


def _dagster_command(name: str) -> str:
    """``dagster`` / ``dagster-daemon`` of the environment running this command (no activated venv needed)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def _workspace_args() -> list[str]:
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    return ["-w", str(workspace)] if workspace.is_file() else ["-m", "augassets.definitions"]


def run_in_foreground(command: list[str]) -> int:
    """Run ``command`` until it ends, passing SIGINT and SIGTERM on to it, so that stopping this
    process stops what it started (``dagster dev`` then stops its webserver, daemon and code server)."""
    process = subprocess.Popen(command)

    def forward(signum, _frame):
        process.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    return process.wait()


def ui(profile: Profile, port: int, host: str) -> int:
    home = ensure_dagster_home(profile)
    os.environ[PROFILE_ENV] = profile.name
    print(f"Dagster UI for profile {profile.name} on http://{host}:{port} (DAGSTER_HOME={home})", flush=True)
    return run_in_foreground([_dagster_command("dagster"), "dev", "-h", host, "-p", str(port), *_workspace_args()])


SENSORS = ("scheduled_backfill", "new_classes", "damaged_outputs")


def daemon(profile: Profile, start: list[str]) -> int:
    """``dagster-daemon run`` on the profile's instance, after starting the sensors named in ``start``."""
    home = ensure_dagster_home(profile)
    os.environ[PROFILE_ENV] = profile.name
    for name in start:
        subprocess.run([_dagster_command("dagster"), "sensor", "start", name, *_workspace_args()], check=True)
    spec = profile.automation
    print(
        f"Dagster daemon for profile {profile.name} (DAGSTER_HOME={home}); backfills at {spec.cron} "
        f"({spec.cron_timezone})",
        flush=True,
    )
    return run_in_foreground([_dagster_command("dagster-daemon"), "run", *_workspace_args()])


def worker(profile: Profile, queue: str, concurrency: int, name: str | None) -> int:
    """A Celery worker serving ``queue`` (``gpu`` or ``dagster``) for the runs of this profile's
    instance: ``dagster-celery worker start`` with the executor's own configuration (executors.py). One per
    GPU on the ``gpu`` queue with concurrency 1, its device chosen by ``CUDA_VISIBLE_DEVICES``."""
    broker = executors.celery_broker()
    if not broker:
        raise SystemExit(
            f"augassets worker: set {executors.CELERY_BROKER_ENV} to the broker's Redis URL (e.g. "
            f"redis://127.0.0.1:6379/0); "
            "the webserver and the daemon need the same setting"
        )
    executors.check_broker(broker)
    home = ensure_dagster_home(profile)
    os.environ[PROFILE_ENV] = profile.name
    config = home / "celery_worker.yaml"
    write_bytes_atomic(executors.worker_yaml().encode(), config)
    # dagster-celery starts `celery` from PATH: this environment's, activated or not.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    name = name or f"{queue}-{os.getpid()}"
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
    print(
        f"Celery worker {name} on queue {queue} (concurrency {concurrency}, CUDA_VISIBLE_DEVICES={devices}) for "
        f"profile "
        f"{profile.name}; broker {executors.redacted(broker)}",
        flush=True,
    )
    return run_in_foreground(
        [
            _dagster_command("dagster-celery"),
            "worker",
            "start",
            "-A",
            "dagster_celery.app",
            "-y",
            str(config),
            "-q",
            queue,
            "-n",
            name,
            "--",
            f"--concurrency={concurrency}",
            "--pool=prefork",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="augassets", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help=f"profile name (default: ${PROFILE_ENV} or mini)")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("benchmark", help="materialize the benchmark headless and print the results table")
    bench.add_argument("--force", action="store_true", help="rebuild every stage even if it is up to date")
    verify_help = "compare every written file's SHA-256 with the one recorded (sizes are compared on every command)"
    bench.add_argument("--verify", action="store_true", help=verify_help)
    found = sub.add_parser("foundation", help="materialize the mini world's pool, CLIP, KNN index and Stable Diffusion")
    found.add_argument("--force", action="store_true", help="rebuild every stage even if it is up to date")
    found.add_argument(
        "--rebuild",
        action="store_true",
        help="train the mini world's models from scratch instead of installing the shipped world (implies --force)",
    )
    world_parser = sub.add_parser(
        "world", help="the shipped mini world: export the world this home trained into the package"
    )
    world_parser.add_argument("action", choices=["export"])
    world_parser.add_argument(
        "--name", default="v2", help="the world's folder under augassets/world (default v2), or a path"
    )
    ui_parser = sub.add_parser("ui", help="open the Dagster UI (dagster dev) on this profile's instance")
    ui_parser.add_argument("--port", type=int, default=3000)
    ui_parser.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    daemon_parser = sub.add_parser(
        "daemon", help="run the Dagster daemon (sensors, backfills, run queue) on this profile's instance"
    )
    daemon_parser.add_argument(
        "--start",
        nargs="*",
        choices=SENSORS,
        default=[],
        metavar="SENSOR",
        help=f"start these sensors first ({', '.join(SENSORS)}); they stay started",
    )
    worker_parser = sub.add_parser(
        "worker", help="run a Celery worker for the steps of launched runs (AUGASSETS_CELERY_BROKER)"
    )
    worker_parser.add_argument(
        "--queue",
        default=executors.GPU_QUEUE,
        choices=[executors.GPU_QUEUE, executors.DEFAULT_QUEUE],
        help="gpu: training, fine-tuning, generation (one worker per GPU); dagster: every other step",
    )
    worker_parser.add_argument("--concurrency", type=int, default=1, help="steps at once (gpu queue: 1 per GPU)")
    worker_parser.add_argument("--name", help="worker name (default: <queue>-<pid>)")
    studies = sub.add_parser("study", help="print a built-in profile as a study file (to start your own from)")
    studies.add_argument(
        "profile_name", nargs="?", metavar="NAME", help="the profile (default: --profile, $AUGASSETS_PROFILE or mini)"
    )
    for command in (bench, found, ui_parser, daemon_parser, worker_parser):
        command.add_argument("--study", type=Path, help="a study file (TOML) instead of a built-in profile")
    args = parser.parse_args(argv)
    if args.profile:
        os.environ[PROFILE_ENV] = args.profile  # also read by worker processes
    if getattr(args, "study", None):
        if args.profile:
            parser.exit(2, "augassets: --profile and --study name two studies; give one\n")
        os.environ[STUDY_ENV] = str(args.study.resolve())  # read again by the UI's, daemon's and workers' processes
    if args.command == "foundation" and args.rebuild:
        os.environ[WORLD_ENV] = "train"
    try:  # a bad setting is one line naming it and what it accepts, before anything is imported or run
        profile = get_profile(getattr(args, "profile_name", None))  # (worker's --name is the worker's)
    except ValueError as error:  # a study file's problems: one line each
        parser.exit(2, "".join(f"augassets: {line}\n" for line in str(error).splitlines()))
    if args.command == "study":
        print(study_toml(profile), end="")
        return 0
    if args.command == "worker":  # before the model libraries: a worker imports them per task
        return worker(profile, args.queue, args.concurrency, args.name)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Per-checkpoint "Loading weights" / "Loading pipeline components" bars drown the run log.
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    if args.command == "world":
        export_world(profile, args.name)
        return 0
    if args.command == "benchmark":
        benchmark(profile, force=args.force, verify=args.verify)
        return 0
    if args.command == "foundation":
        started = time.perf_counter()
        if profile.world is None:
            raise SystemExit(
                f"profile {profile.name} has no mini world: its pool, CLIP, index and SD are external assets"
            )
        materialize(profile, foundation_keys, force=args.force or args.rebuild)
        print(f"foundation ready in {time.perf_counter() - started:.0f} s: {profile.home / 'store' / 'models'}")
        return 0
    if args.command == "daemon":
        return daemon(profile, args.start)
    return ui(profile, args.port, args.host)


if __name__ == "__main__":
    sys.exit(main())
