"""The runner's recovery: commands killed, interrupted (SIGTERM) or out of disk leave work the next one
finishes, a second command on the same home stops, and damaged state on disk is found, named and repaired."""

from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from augassets import cli
from augassets.build import build_defs
from augassets.core.warehouse import Warehouse
from augassets.runner import runs as runner
from augassets.runner.command import materialize
from augassets.tags import ASSETS_TAG


def test_a_command_killed_after_its_evaluation_leaves_the_requested_work_to_the_next(private_state, monkeypatch):
    """Dagster counts a requested partition as handled, and the cursor already holds the change that
    requested it: a command that dies before its runs finish must not turn that work into "up to
    date". The pending partitions are on disk before anything runs; the next command runs them."""
    import os

    # First whatever earlier tests left stale in the shared state (test_pipeline.py rebuilds the foundation
    # there), so that what follows launches the changed setting's reruns only.
    materialize(private_state, cli.benchmark_keys, say=lambda *_: None)
    changed = replace(
        private_state, duplicates=replace(private_state.duplicates, target_recall=0.9)
    )  # leak_threshold's version
    home = Path(os.environ["DAGSTER_HOME"])
    real_execute = runner.execute

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies as the first run starts

    monkeypatch.setattr(runner, "execute", killed)
    with pytest.raises(KeyboardInterrupt):
        materialize(changed, cli.benchmark_keys, say=lambda *_: None)
    assert (home / runner.PENDING_FILE).is_file()
    monkeypatch.setattr(runner, "execute", real_execute)

    instance = dg.DagsterInstance.get()
    before = {run.run_id for run in instance.get_runs()}
    lines = []
    materialize(changed, cli.benchmark_keys, say=lines.append)
    assert any(
        line.startswith("- resuming what an earlier command requested and did not finish: leak_threshold (1)")
        for line in lines
    ), lines
    launched = [run for run in instance.get_runs() if run.run_id not in before]
    assert [run.tags[ASSETS_TAG] for run in reversed(launched)] == [
        "leak_threshold",
        "duplicate_report",
        "duplicate_summary,results_table,compute_report,analysis_report",
    ]
    assert Warehouse(changed.tables).query("SELECT recall FROM leak_threshold")["recall"][0] >= 0.9
    assert not (home / runner.PENDING_FILE).exists(), "nothing is left pending once it has run"


def _augassets_command(*args: str) -> list[str]:
    import sys

    return [str(Path(sys.executable).with_name("augassets")), *args]


def test_an_unreadable_automation_cursor_starts_fresh_and_says_so(private_state):
    """A cursor this Dagster cannot read (another version wrote it, or it is damaged) is named, moved
    aside, and the command evaluates from a fresh cursor: with everything up to date, nothing runs."""
    import os

    home = Path(os.environ["DAGSTER_HOME"])
    (home / runner.CURSOR_FILE).write_text('{"__class__": "AssetDaemonCursorFromAFutureDagster"}')
    instance = dg.DagsterInstance.get()
    runs_before, lines = len(instance.get_runs()), []
    materialize(private_state, cli.benchmark_keys, say=lines.append)
    assert any(
        line.startswith(f"- the automation cursor {home / runner.CURSOR_FILE} could not be read")
        and line.endswith(f"moved to {runner.CURSOR_FILE}.unreadable, evaluating from a fresh cursor")
        for line in lines
    ), lines
    assert (home / f"{runner.CURSOR_FILE}.unreadable").is_file()
    assert len(instance.get_runs()) == runs_before
    assert runner.load_cursor(home) is not None  # the fresh evaluation's cursor, saved for the next command


def test_a_second_command_on_the_same_home_stops_naming_the_first(private_state):
    """Two commands on one home would race on the catalog and on the instance's first migration: the
    second stops at once, and its last line names the first and the setting to change."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "AUGASSETS_PROFILE": "smoke"}  # the private copy's AUGASSETS_HOME and DAGSTER_HOME
    hold = (
        "import time\nfrom augassets.runner.command import home_lock\nfrom augassets.profiles import PROFILES, "
        "get_profile\n"
        "with home_lock(get_profile('smoke')):\n    print('locked', flush=True)\n    time.sleep(300)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run(_augassets_command("benchmark"), env=env, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode != 0
    last = (second.stdout + second.stderr).strip().splitlines()[-1]
    assert last.startswith(f"another augassets command is running on {private_state.home} (pid {holder.pid}, started ")
    assert last.endswith("wait for it to finish, or set AUGASSETS_HOME to another folder")


def test_damaged_state_on_disk_is_found_and_named(private_state):
    """Freshness includes the files: a deleted augmentation image, a generated PNG cut to half its size
    under its own name, a deleted classifier checkpoint and a partition's prompts deleted from their
    table make exactly those partitions stale, each with a line naming what is missing or changed and
    an observation on its asset; a file rewritten at its own size is found when hashes are compared
    (``--verify``); a truncated table file is moved aside (named) and the partitions whose rows it held
    are stale."""
    from augassets import integrity
    from augassets.core.files import load_checkpoint
    from augassets.resources import default_resources

    profile, defs, instance = private_state, build_defs(private_state, daemon=False), dg.DagsterInstance.get()
    keys, resources, lines = cli.benchmark_keys(defs), default_resources(private_state), []
    assert integrity.damaged_partitions(defs, instance, keys, resources, lines.append) == {} and lines == []

    db, store = Warehouse(profile.tables), profile.home / "store"
    wnids = db.query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"].to_list()
    generated = db.query(
        "SELECT path FROM augmentation_manifest WHERE method = 'simple_prompt' AND wnid = ? ORDER BY rank", [wnids[0]]
    )["path"]
    image = generated[3]
    generated = len(generated)
    Path(image).unlink()
    cut = Path(
        db.query(
            "SELECT path FROM augmentation_manifest WHERE method = 'simple_prompt' AND wnid = ? ORDER BY rank",
            [wnids[1]],
        )["path"][0]
    )
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (store / "models" / "classifiers" / "retrieval" / "replicate_1.safetensors").unlink()
    checkpoint = store / "models" / "fidelity_classifier.safetensors"  # truncated before class_fidelity scores with it
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1000])
    with pytest.raises(
        ValueError,
        match=rf"checkpoint {checkpoint} is damaged, truncated: \d+ bytes of \d+: rematerialize fidelity_classifier",
    ):
        load_checkpoint(checkpoint, "fidelity_classifier")
    db.replace(
        "class_prompts",
        db.query("SELECT * FROM class_prompts LIMIT 0"),
        where={"method": "clip_prompts", "wnid": wnids[1]},
    )

    damaged = integrity.damaged_partitions(defs, instance, keys, resources, lines.append)
    as_text = {
        key.to_user_string(): {p if p is None else str(p) for p in partitions} for key, partitions in damaged.items()
    }
    assert as_text == {
        "augmentation_images": {f"simple_prompt|{wnids[0]}", f"simple_prompt|{wnids[1]}"},
        "classifier_scores": {"retrieval|1"},
        "class_prompts": {f"clip_prompts|{wnids[1]}"},
        "fidelity_classifier": {None},
    }
    assert (
        "- fidelity_classifier: outputs damaged on disk, rebuilding the asset — "
        "models/fidelity_classifier.safetensors is damaged "
        f"(truncated: {checkpoint.stat().st_size} bytes of {checkpoint.stat().st_size + 1000})" in lines
    )
    assert (
        f"- augmentation_images: outputs damaged on disk, rebuilding 2 partitions — simple_prompt|{wnids[0]}: 1 "
        f"of {generated} files in augmentation_manifest.path are missing ({Path(image).name}); "
        f"simple_prompt|{wnids[1]}: 1 of {generated} files in augmentation_manifest.path differ from what was "
        f"written ({cut.name})" in lines
    )
    observed = instance.fetch_observations(dg.AssetKey("augmentation_images"), limit=10).records
    assert {(r.partition_key, r.asset_observation.metadata[integrity.DAMAGE_KEY].value) for r in observed} >= {
        (
            f"simple_prompt|{wnids[1]}",
            f"1 of {generated} files in augmentation_manifest.path differ from what was written ({cut.name})",
        )
    }

    # The same bytes count, a different content: only the hashes tell (``augassets benchmark --verify``).
    rewritten = Path(
        db.query("SELECT path FROM augmentation_manifest WHERE method = 'retrieval' ORDER BY wnid, rank")["path"][0]
    )
    data = bytearray(rewritten.read_bytes())
    data[-20] ^= 0xFF
    rewritten.write_bytes(bytes(data))
    key = dg.AssetKey("augmentation_images")
    assert all("retrieval" not in str(p) for p in integrity.damaged_partitions(defs, instance, [key], resources)[key])
    verified = integrity.damaged_partitions(defs, instance, [key], resources, lines.append, verify=True)[key]
    assert sum("retrieval" in str(p) for p in verified) == 1

    assert (
        "- classifier_scores: outputs damaged on disk, rebuilding 1 partition — retrieval|1: "
        "models/classifiers/retrieval/replicate_1.safetensors is missing from the image store" in lines
    )
    assert (
        f"- class_prompts: outputs damaged on disk, rebuilding 1 partition — clip_prompts|{wnids[1]}: table "
        f"class_prompts has no rows for it" in lines
    )

    # A table file cut short (a full disk under an older writer, a hand edit): named, moved aside, and
    # exactly the partitions whose rows it held are rebuilt.
    scores = Path(db.folder("classifier_scores", {"method": "real_p", "replicate": 1})) / "part.parquet"
    whole = Path(db.folder("class_catalog")) / "part.parquet"
    for part in (scores, whole):
        part.write_bytes(part.read_bytes()[:100])
    lines.clear()
    damaged = integrity.damaged_partitions(defs, instance, keys, resources, lines.append)
    assert sorted(lines[:2]) == [
        f"- damaged table file: {part} (no Parquet magic bytes: truncated or not Parquet); moved to "
        f"part.parquet.damaged"
        for part in sorted((scores, whole))
    ]
    assert not scores.exists() and scores.with_name("part.parquet.damaged").stat().st_size == 100
    assert {str(p) for p in damaged[dg.AssetKey("classifier_scores")]} == {"real_p|1", "retrieval|1"}
    assert damaged[dg.AssetKey("class_catalog")] == {None}
    assert (
        f"- class_catalog: outputs damaged on disk, rebuilding the asset — table class_catalog has no files in "
        f"{profile.tables}" in lines
    )
    assert "real_p|1: table classifier_scores has no rows for it" in next(
        line for line in lines if line.startswith("- classifier_scores:")
    )


def test_the_daemons_sensor_repairs_a_damaged_partition(private_state):
    """The daemon's side of the integrity check (the ``damaged_outputs`` sensor): a generated PNG cut to
    half its size is found, recorded on its asset and one run is requested for exactly its partition;
    that run writes the file whole again and the next evaluation finds nothing to repair."""
    from augassets.resources import default_resources

    profile, defs, instance = private_state, build_defs(private_state), dg.DagsterInstance.get()
    sensor = defs.resolve_sensor_def("damaged_outputs")
    db = Warehouse(profile.tables)
    row = db.query(
        "SELECT wnid, path, path_bytes FROM augmentation_manifest WHERE method = 'simple_prompt' ORDER BY wnid, rank"
    ).row(0, named=True)
    image = Path(row["path"])
    image.write_bytes(image.read_bytes()[: row["path_bytes"] // 2])

    resources = default_resources(profile)
    with dg.build_sensor_context(instance=instance, definitions=defs, resources=resources) as context:
        found = sensor(context)
    key = dg.AssetKey("augmentation_images")
    assert [(r.asset_selection, r.partition_key) for r in found.run_requests] == [
        ([key], f"simple_prompt|{row['wnid']}")
    ]
    observed = instance.fetch_observations(key, limit=5).records
    assert observed[0].partition_key == f"simple_prompt|{row['wnid']}"

    run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[key], instance=instance, partition_key=found.run_requests[0].partition_key
    )
    assert run.success and image.stat().st_size == row["path_bytes"]
    with dg.build_sensor_context(
        instance=instance, definitions=defs, resources=resources, cursor=found.cursor
    ) as context:
        again = sensor(context)
    assert again.run_requests == [] and again.skip_reason.skip_message.startswith("no damaged outputs among")


def test_sigterm_stops_the_command_gracefully(private_state):
    """SIGTERM while a run holds the gpu pool's slot: the command stops within seconds, its run is
    marked failed, the slot is free without help from a later command, and the last line says what
    happened and what to do."""
    import os
    import shutil
    import signal
    import subprocess
    import time

    env = {**os.environ, "AUGASSETS_PROFILE": "smoke"}
    instance = dg.DagsterInstance.get()
    wnid = Warehouse(private_state.tables).query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"][0]
    shutil.rmtree(private_state.home / "store" / "images" / "simple_prompt" / wnid)  # something to rebuild
    storage = instance.event_log_storage
    command = subprocess.Popen(
        _augassets_command("benchmark"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 240
    while not storage.get_concurrency_run_ids():
        assert command.poll() is None and time.time() < deadline, "the command ended before it held a pool slot"
        time.sleep(0.05)
    held = storage.get_concurrency_run_ids()
    command.send_signal(signal.SIGTERM)
    output, _ = command.communicate(timeout=60)
    assert command.returncode != 0
    for run_id in held:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert not storage.get_concurrency_run_ids()
    last = output.strip().splitlines()[-1]
    assert (
        "failed: interrupted by SIGTERM or Ctrl-C: the run is marked failed and its pool slots are free; rerun "
        "the command to resume" in last
    )
    assert any(run_id in last for run_id in held)


def test_sigterm_stops_the_command_and_its_worker_processes(private_state):
    """With AUGASSETS_WORKERS=2, SIGTERM to the command while the workers' runs hold the gpu pool's
    slots: the command passes it on, every run it started is marked failed, no slot stays held, no
    worker process outlives the command, the last line says what happened, and a rerun finishes."""
    import os
    import shutil
    import signal
    import subprocess
    import time

    from .services import survivors

    env = {
        **os.environ,
        "AUGASSETS_PROFILE": "smoke",
        "AUGASSETS_METHODS": "real_p,simple_prompt,retrieval",
        "AUGASSETS_WORKERS": "2",
    }
    instance = dg.DagsterInstance.get()
    shutil.rmtree(private_state.home / "store" / "images" / "simple_prompt")  # three partitions to rebuild
    storage = instance.event_log_storage
    before = {run.run_id for run in instance.get_runs()}
    command = subprocess.Popen(
        _augassets_command("benchmark"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not storage.get_concurrency_run_ids():
        assert command.poll() is None and time.time() < deadline, "the command ended before a worker held a pool slot"
        time.sleep(0.05)
    command.send_signal(signal.SIGTERM)
    output, _ = command.communicate(timeout=90)
    assert command.returncode != 0
    assert not survivors(groups={command.pid}), "a worker process outlived its command"
    launched = [run for run in instance.get_runs() if run.run_id not in before]
    assert launched and all(
        run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE) for run in launched
    )
    assert any(run.status == dg.DagsterRunStatus.FAILURE for run in launched)
    assert not storage.get_concurrency_run_ids()
    last = output.strip().splitlines()[-1]
    assert (
        "failed: interrupted by SIGTERM or Ctrl-C: the run is marked failed and its pool slots are free; rerun "
        "the command to resume" in last
    ), last
    again = subprocess.run(_augassets_command("benchmark"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    manifest = Warehouse(private_state.tables).query(
        "SELECT wnid, path FROM augmentation_manifest WHERE method = 'simple_prompt'"
    )
    assert manifest["wnid"].n_unique() == 3 and all(Path(p).is_file() for p in manifest["path"]), (
        "every class's images are back"
    )


def test_a_full_disk_fails_the_partition_naming_it_and_a_rerun_resumes(benchmark_run, small_disk):
    """Disk full while writing generated images (a real 100 kB tmpfs): the error names the file's disk
    and the settings to change; no half-written file or temporary survives; once there is space, the
    rerun completes the partition with the same images as the clean run."""
    import hashlib

    from augassets.core.files import DiskFullError
    from augassets.core.generation import GenerationRequest, generate_partition
    from augassets.core.images import ImageStatus, inspect_image
    from augassets.resources import default_resources

    profile, _ = benchmark_run
    disk, resize = small_disk
    resize("32k")  # eight pages: full partway through the partition's images
    backend = default_resources(profile)["diffusion_backend"]
    pipeline = backend.load()
    db = Warehouse(profile.tables)
    wnid = db.query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"][0]
    prompts = db.query(
        "SELECT prompt, family FROM class_prompts WHERE method = 'simple_prompt' AND wnid = ? ORDER BY prompt_index",
        [wnid],
    )
    request = GenerationRequest(
        "simple_prompt",
        wnid,
        prompts["prompt"].to_list(),
        prompts["family"].to_list(),
        base_seed=profile.generation.seed,
    )
    final = disk / "images" / "simple_prompt" / wnid

    def run():
        return generate_partition(
            pipeline,
            request,
            final,
            backend.steps,
            backend.guidance_scale,
            backend.batch_size,
            profile.generation.max_attempts,
        )

    with pytest.raises(
        DiskFullError,
        match=r"no space left on the disk of .*small_disk/images/simple_prompt/.* free space there, "
        r"or move the home \(AUGASSETS_HOME\) or the image store \(AUGASSETS_STORE_URL\)",
    ):
        run()
    written = [p for p in disk.rglob("*") if p.is_file()]
    assert written and not [p for p in written if p.name.endswith(".tmp")], "no temporary file survives"
    assert all(inspect_image(p) == ImageStatus.OK for p in written if p.suffix == ".png"), "every file left is whole"
    assert not final.exists(), "the partition is not published half-done"

    resize("4m")
    records = run()
    assert len(records) == prompts.height
    clean = profile.home / "store" / "images" / "simple_prompt" / wnid
    digest = lambda folder: {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}  # noqa: E731
    assert digest(final) == digest(clean)


def test_a_killed_rebuild_resumes_and_ends_bit_identical_to_a_clean_run(private_state):
    """A generated partition deleted from disk is rebuilt. kill -9 while it is being generated (one
    chunk done): the dead run stayed "in progress" and held the gpu pool's only slot, so any later step
    of the pool waited forever. Now the next command marks that run failed and frees its slot (saying
    so), resumes the partition from its finished chunk, and ends with the very images and tables the
    clean run made."""
    import hashlib
    import os
    import shutil
    import signal
    import subprocess
    import time

    # The rebuild retrains what reads the rebuilt partition; three methods keep that short (the others' tables
    # are compared too).
    env = {**os.environ, "AUGASSETS_PROFILE": "smoke", "AUGASSETS_METHODS": "real_p,simple_prompt,retrieval"}
    instance = dg.DagsterInstance.get()
    db = Warehouse(private_state.tables)
    wnid = db.query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"][0]
    folder = private_state.home / "store" / "images" / "simple_prompt" / wnid
    clean_images = {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}
    tables = {
        "augmentation_manifest": "SELECT * FROM augmentation_manifest ORDER BY method, wnid, rank",
        # timings aside
        "classifier_scores": "SELECT * EXCLUDE (train_seconds, images_per_second) FROM classifier_scores "
        "ORDER BY method, replicate",
        "per_class_scores": "SELECT * FROM per_class_scores ORDER BY method, replicate, label",
    }
    clean_tables = {name: db.query(sql) for name, sql in tables.items()}
    shutil.rmtree(folder)
    progress = folder.with_name(folder.name + ".partial") / "manifest.jsonl"

    storage = instance.event_log_storage
    first = subprocess.Popen(
        _augassets_command("benchmark"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while not progress.exists():  # the first chunk of the partition is recorded
        assert first.poll() is None and time.time() < deadline, "the command ended before it generated a chunk"
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    held = storage.get_concurrency_run_ids()
    assert held, "the killed command's run still holds its slot"
    assert not folder.exists() and len(progress.read_text().splitlines()) == 1, (
        "killed mid-partition: one chunk done, not published"
    )

    second = subprocess.run(_augassets_command("benchmark"), env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    for run_id in held:
        assert (
            f"- released run {run_id}: it ended without finishing (its process died); its pool slots are free"
            in second.stdout
        )
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert not storage.get_concurrency_run_ids()
    assert {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.glob("*.png")} == clean_images
    for name, sql in tables.items():
        assert db.query(sql).equals(clean_tables[name]), name
