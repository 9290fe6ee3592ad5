"""The image store: a local folder, or an fsspec URL (here ``memory://``) with a local working copy."""

import uuid
from pathlib import Path

import dagster as dg
import fsspec
import pytest

from augassets.build import build_stages
from augassets.core.store import MANIFEST_NAME, Store, folder_manifest, redact
from augassets.profiles import get_profile
from augassets.resources import ComputeResource, ImageStoreResource, WarehouseResource


@pytest.fixture
def url() -> str:
    return f"memory://augassets-test-{uuid.uuid4().hex}/store"


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


def test_local_store_is_the_folder_itself(tmp_path):
    store = Store(str(tmp_path / "s"))
    assert not store.remote
    assert store.path("images", "a") == tmp_path / "s" / "images" / "a"
    assert store.url("models") == str(tmp_path / "s" / "models")
    assert store.publish("anything").uploaded == 0  # nothing to upload to
    assert store.fetch("models") == tmp_path / "s" / "models"
    assert Store(f"file://{tmp_path}/s").path("x") == tmp_path / "s" / "x"


def test_credentials_in_a_store_url_never_reach_logs_or_metadata():
    assert (
        redact("sftp://alice:s3cret@files.example.org:2222/augassets") == "sftp://***@files.example.org:2222/augassets"
    )
    assert redact("s3://bucket/prefix") == "s3://bucket/prefix"
    assert redact("/data/store") == "/data/store"
    with pytest.raises(ValueError) as error:
        Store("ftp://bob:hunter2@ftp.example.org/x")
    assert "hunter2" not in str(error.value) and "cache_dir" in str(error.value)


def test_url_store_needs_a_working_copy_folder(url):
    with pytest.raises(ValueError, match="cache_dir"):
        Store(url)


def test_publish_then_fetch_round_trips_a_folder_and_only_sends_changes(tmp_path, url):
    store = Store(url, str(tmp_path / "work"))
    folder = store.path("images", "retrieval", "n01")
    _write(folder, {"a.png": b"a" * 100, "b.png": b"b" * 50, "sub/c.bin": b"c"})
    first = store.publish("images", "retrieval", "n01")
    assert (first.uploaded, first.deleted) == (3, 0)
    fs = fsspec.filesystem("memory")
    remote = url.removeprefix("memory://") + "/images/retrieval/n01"
    assert fs.isfile(f"{remote}/{MANIFEST_NAME}") and fs.cat_file(f"{remote}/sub/c.bin") == b"c"
    assert store.url("images") == url + "/images"

    # change one file, delete one, add one: only the difference travels
    _write(folder, {"a.png": b"A" * 100, "d.png": b"d"})
    (folder / "b.png").unlink()
    second = store.publish("images", "retrieval", "n01")
    assert (second.uploaded, second.deleted, second.unchanged) == (2, 1, 1)
    assert not fs.exists(f"{remote}/b.png")

    # a fresh working copy gets exactly the published folder back
    other = Store(url, str(tmp_path / "elsewhere"))
    fetched = other.fetch("images", "retrieval", "n01")
    assert _tree(fetched) == _tree(folder)
    assert folder_manifest(fetched) == folder_manifest(folder)


def test_fetch_is_a_no_op_when_the_working_copy_matches(tmp_path, url, monkeypatch):
    store = Store(url, str(tmp_path / "work"))
    _write(store.path("models", "clip"), {"config.json": b"{}", "model.safetensors": b"w" * 64})
    store.publish("models", "clip")
    other = Store(url, str(tmp_path / "other"))
    other.fetch("models", "clip")
    calls = []
    monkeypatch.setattr(other.fs, "get_file", lambda *a, **k: calls.append(a))
    other.fetch("models", "clip")
    assert calls == []


def test_a_changed_remote_folder_replaces_the_working_copy(tmp_path, url):
    writer, reader = Store(url, str(tmp_path / "w")), Store(url, str(tmp_path / "r"))
    _write(writer.path("pool_index"), {"image.index": b"1", "img_emb/img_emb_0.npy": b"e1"})
    writer.publish("pool_index")
    reader.fetch("pool_index")
    (writer.path("pool_index") / "img_emb" / "img_emb_0.npy").unlink()
    _write(writer.path("pool_index"), {"image.index": b"2", "img_emb/img_emb_1.npy": b"e2"})
    writer.publish("pool_index")
    assert _tree(reader.fetch("pool_index")) == {"image.index": b"2", "img_emb/img_emb_1.npy": b"e2"}


def test_an_interrupted_publish_is_refused_then_repaired(tmp_path, url, monkeypatch):
    store = Store(url, str(tmp_path / "work"))
    _write(store.path("models", "unet"), {f"part_{i}.bin": bytes([i]) * 10 for i in range(4)})
    real_put = store.fs.put_file
    sent = []

    def failing_put(local, key, *args, **kwargs):
        if len(sent) == 2:
            raise ConnectionError("network went away")
        sent.append(key)
        real_put(local, key, *args, **kwargs)

    monkeypatch.setattr(store.fs, "put_file", failing_put)
    with pytest.raises(ConnectionError):
        store.publish("models", "unet")
    reader = Store(url, str(tmp_path / "reader"))
    with pytest.raises(RuntimeError, match="publish did not finish"):
        reader.fetch("models", "unet")
    assert not reader.path("models", "unet").exists()

    monkeypatch.undo()
    fsspec.filesystem("memory").pipe_file(url.removeprefix("memory://") + "/models/unet/leftover.partial", b"x")
    stats = store.publish("models", "unet")
    assert stats.uploaded == 4 and stats.deleted == 1  # no manifest to trust: everything re-sent, strays removed
    assert _tree(reader.fetch("models", "unet")) == _tree(store.path("models", "unet"))


def test_a_corrupted_remote_file_fails_the_fetch_and_keeps_the_old_copy(tmp_path, url):
    writer, reader = Store(url, str(tmp_path / "w")), Store(url, str(tmp_path / "r"))
    _write(writer.path("web_pool"), {"00000.png": b"one", "00001.png": b"two"})
    writer.publish("web_pool")
    before = _tree(reader.fetch("web_pool"))
    _write(writer.path("web_pool"), {"00001.png": b"TWO"})
    writer.publish("web_pool")
    fsspec.filesystem("memory").pipe_file(url.removeprefix("memory://") + "/web_pool/00001.png", b"garbage")
    with pytest.raises(RuntimeError, match="00001.png does not match its manifest"):
        reader.fetch("web_pool")
    assert _tree(reader.path("web_pool")) == before
    assert sorted(p.name for p in reader.path().iterdir()) == [".manifests", "web_pool"]  # no half-built folder left


def test_single_files_and_missing_entries(tmp_path, url):
    store = Store(url, str(tmp_path / "work"))
    checkpoint = store.path("models", "fidelity_classifier.safetensors")
    _write(checkpoint.parent, {checkpoint.name: b"weights"})
    assert store.publish("models", checkpoint.name).uploaded == 1
    other = Store(url, str(tmp_path / "other"))
    assert other.fetch("models", checkpoint.name).read_bytes() == b"weights"
    # retrained elsewhere: same size (as every checkpoint of one architecture), new content
    checkpoint.write_bytes(b"WEIGHTS")
    store.publish("models", checkpoint.name)
    assert other.fetch("models", checkpoint.name).read_bytes() == b"WEIGHTS"
    fsspec.filesystem("memory").rm_file(url.removeprefix("memory://") + "/models/fidelity_classifier.safetensors.sha1")
    with pytest.raises(RuntimeError, match="publish did not finish"):
        other.fetch("models", checkpoint.name)
    with pytest.raises(FileNotFoundError, match="materialize the asset that writes it"):
        other.fetch("models", "vae")
    with pytest.raises(FileNotFoundError, match="cannot publish"):
        store.publish("models", "vae")


def test_ensure_downloads_missing_table_files_only(tmp_path, url):
    store = Store(url, str(tmp_path / "work"))
    _write(store.path("datasets", "fm"), {f"train/n01/{i:05d}.png": bytes([i]) * 8 for i in range(5)})
    store.publish("datasets", "fm")
    paths = [str(p) for p in sorted(store.path("datasets", "fm").rglob("*.png"))]
    for p in paths[:3]:
        Path(p).unlink()
    outside = tmp_path / "imagenet" / "x.JPEG"  # a file outside the store is its reader's business
    never_published = store.path("datasets", "fm", "train", "n01", "99999.png")
    stats = store.ensure([*paths, outside, never_published])
    assert (stats.downloaded, stats.unchanged) == (3, 2)
    assert all(Path(p).read_bytes() for p in paths) and not outside.exists() and not never_published.exists()
    assert not list(store.path().rglob("*.fetch"))


def test_assets_publish_to_and_fetch_from_a_url_store(tmp_path, url):
    """dataset_splits publishes its exported images; with the working copy wiped, fidelity_classifier
    fetches the split images it trains on and publishes its checkpoint."""
    import shutil

    built = build_stages(get_profile("smoke"))
    assets = [built.class_catalog, built.dataset_splits, built.fidelity_classifier]
    work = tmp_path / "store"
    resources = {
        "warehouse": WarehouseResource(root=str(tmp_path / "tables")),
        "image_store": ImageStoreResource(root=url, cache_dir=str(work)),
        "compute": ComputeResource(),
    }
    first = dg.materialize(assets[:2], resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert first.success
    fs, base = fsspec.filesystem("memory"), url.removeprefix("memory://")
    exported = sorted(p.relative_to(work).as_posix() for p in (work / "datasets").rglob("*.png"))
    assert exported and all(fs.isfile(f"{base}/{rel}") for rel in exported)
    grid_url = first.asset_materializations_for_node("dataset_splits")[0].metadata["target_sample_grid_path"].value
    assert grid_url == f"{url}/reports/dataset_splits_target_grid.png"

    shutil.rmtree(work)
    second = dg.materialize(
        assets, selection=[built.fidelity_classifier], resources=resources, instance=dg.DagsterInstance.ephemeral()
    )
    assert second.success
    assert sorted(p.relative_to(work).as_posix() for p in (work / "datasets").rglob("*.png")) == exported
    assert fs.isfile(f"{base}/models/fidelity_classifier.safetensors")
    metadata = second.asset_materializations_for_node("fidelity_classifier")[0].metadata
    assert metadata["checkpoint"].value == f"{url}/models/fidelity_classifier.safetensors"


WIPED_WORKING_COPY_SCRIPT = r"""
import json, os, shutil, sys
from pathlib import Path
from dataclasses import replace
import dagster as dg
from augassets import cli
from augassets.build import build_defs
from augassets.profiles import get_profile

# The stages this test reruns, not every method: the whole smoke grid is the benchmark fixture's.
profile = replace(get_profile("smoke"), methods=("real_p", "boomerang", "simple_prompt", "retrieval"))
cli.benchmark(profile)
defs = build_defs(profile)
store = profile.home / "store"
published = sorted(p.relative_to(store).as_posix() for p in (store / "images").rglob("*.png"))
shutil.rmtree(store)  # the working copy is gone; the URL store still has everything
instance = dg.DagsterInstance.get()
wnid = instance.get_dynamic_partitions("class")[0]
job = defs.resolve_implicit_global_asset_job_def()
results = {}
for asset, key in (("augmentation_images", f"retrieval|{wnid}"), ("augmentation_images", f"boomerang|{wnid}"),
                   ("classifier_scores", "simple_prompt|0"), ("class_fidelity", None), ("duplicate_summary", None)):
    run = job.execute_in_process(asset_selection=[dg.AssetKey(asset)], instance=instance, partition_key=key,
    raise_on_error=False)
    results[f"{asset}[{key}]"] = run.success
restored = sorted(p.relative_to(store).as_posix() for p in (store / "images").rglob("*.png"))
print("RESULT " + json.dumps({"results": results, "published": published, "restored": restored}))
"""


def test_downstream_stages_run_from_the_url_store_after_the_working_copy_is_lost(tmp_path):
    """The whole smoke benchmark on a memory:// store (one process: memory:// lives in it), then the
    local working copy is deleted and later stages — retrieval (CLIP, index and pool fetched),
    Boomerang (SD and target images fetched), a classifier, class fidelity, the duplicate summary —
    run again from what the store holds."""
    import json
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "AUGASSETS_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "AUGASSETS_STORE_URL": "memory://augassets-e2e/store",
        "AUGASSETS_PROFILE": "smoke",
    }
    (tmp_path / "dagster").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", WIPED_WORKING_COPY_SCRIPT], env=env, capture_output=True, text=True, timeout=900
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    report = json.loads(lines[-1].removeprefix("RESULT "))
    assert report["results"] and all(report["results"].values()), report["results"]
    # class_fidelity read every augmentation image: all of them are back in the working copy
    assert report["restored"] == report["published"] and len(report["published"]) > 100
