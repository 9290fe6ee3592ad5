"""The shipped world: exported from a home that trained it, installed into a fresh home without
training, refused when a file is damaged or the definitions that made it changed; and the target
domain's staging, a pure function of (design, item)."""

import json
import shutil
from dataclasses import replace

import dagster as dg
import numpy as np
import pytest
from safetensors.torch import load_file

from augassets.core.target_domain import render
from augassets.core.world import ShippedWorld, ShippedWorldError, sha256_of
from augassets.profiles import TARGET_DESIGNS, located


def test_target_staging_is_a_pure_function_of_design_and_item():
    garment = np.zeros((28, 28), np.uint8)
    garment[6:22, 9:19] = 200
    design = TARGET_DESIGNS["studio"]
    first, again = render(garment, "train/7", design), render(garment, "train/7", design)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert first.mode == "RGB" and first.size == (design.image_size, design.image_size)
    # Another item, another staging; the same index in the test part is another item too.
    assert not np.array_equal(np.asarray(first), np.asarray(render(garment, "train/8", design)))
    assert not np.array_equal(np.asarray(first), np.asarray(render(garment, "test/7", design)))
    # No design: the garment as Fashion-MNIST ships it.
    assert np.array_equal(np.asarray(render(garment, "train/7", None)), garment)


@pytest.fixture(scope="module")
def exported_world(benchmark_run, tmp_path_factory):
    """The smoke world the session's benchmark trained, exported as a shipped world."""
    from augassets import cli

    profile, _ = benchmark_run
    folder = tmp_path_factory.mktemp("worlds") / "smoke_world"
    lines = []
    cli.export_world(profile, str(folder), say=lines.append)
    return profile, folder, lines


def test_export_writes_every_model_with_checksums_and_the_versions_that_made_it(exported_world):
    profile, folder, lines = exported_world
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["assets"]) == {"clip_model", "vae", "unet", "fidelity_judge"}
    assert manifest["profile"] == "smoke" and manifest["stored_dtype"] == "float16"
    clip = manifest["assets"]["clip_model"]
    # The CLIP's lineage reaches back to the splits and the catalog: a changed pool or target makes it stale.
    assert {"clip_model", "web_pool", "dataset_splits", "class_catalog"} <= set(clip["code_versions"])
    assert "clip_model.zero_shot_top1" in manifest["calibration"]
    world = ShippedWorld.open(str(folder))
    for asset in manifest["assets"]:
        world.verify(asset)
    weights = load_file(folder / "clip_model" / "model.safetensors")
    assert {str(t.dtype) for t in weights.values() if t.is_floating_point()} == {"torch.float16"}
    # The fast tokenizer's file is derived by transformers from vocab.json and merges.txt: not shipped.
    assert {"clip_model/vocab.json", "clip_model/merges.txt"} <= set(
        clip["files"]
    ) and "clip_model/tokenizer.json" not in clip["files"]
    assert not (folder / "clip_model" / "tokenizer.json").exists()
    assert lines[-1].startswith("shipped world")


def test_a_fresh_home_installs_the_shipped_world_without_training(exported_world, tmp_path, monkeypatch):
    import torch

    from augassets import cli
    from augassets.runner.command import materialize

    trained_profile, folder, _ = exported_world
    monkeypatch.setenv("AUGASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    trained_profile = located(trained_profile)  # at this test's home
    profile = replace(trained_profile, world=replace(trained_profile.world, shipped=str(folder)))
    materialize(profile, cli.foundation_keys, say=lambda *_: None)
    instance = dg.DagsterInstance.get()
    for asset in ("clip_model", "vae", "unet", "fidelity_judge"):
        metadata = instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata
        assert metadata["source"].value == f"shipped world {folder.name}"
        assert "losses" not in metadata  # nothing was trained: the training figures are the shipped ones
    clip_meta = instance.get_latest_materialization_event(dg.AssetKey("clip_model")).asset_materialization.metadata
    assert clip_meta["shipped_losses"].value  # the losses recorded when the world was trained
    assert 0.0 <= clip_meta["zero_shot_top1"].value <= 1.0  # measured again on this home's test split
    # Installed in float32, equal to the trained weights rounded to half precision.
    installed = load_file(profile.home / "store" / "models" / "clip" / "model.safetensors")
    trained = load_file(trained_profile.home / "store" / "models" / "clip" / "model.safetensors")
    assert set(installed) == set(trained)
    for name, tensor in trained.items():
        assert installed[name].dtype == tensor.dtype
        if tensor.is_floating_point():
            assert torch.equal(installed[name], tensor.half().float())
    # The pipeline downstream was assembled from the installed models, and the rerun has nothing to do.
    assert (profile.home / "store" / "models" / "stable_diffusion" / "model_index.json").is_file()
    said = []
    materialize(profile, cli.foundation_keys, say=said.append)
    assert not any(line.endswith(": materializing") for line in said)


def test_a_damaged_file_is_named_and_nothing_is_installed_from_it(exported_world, tmp_path):
    _, folder, _ = exported_world
    copy = tmp_path / "world"
    shutil.copytree(folder, copy)
    damaged = copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    world = ShippedWorld.open(str(copy))
    versions = world.entry("vae")["code_versions"]
    with pytest.raises(
        ShippedWorldError, match=r"vae/diffusion_pytorch_model\.safetensors is damaged \(checksum mismatch"
    ):
        world.install("vae", versions, tmp_path / "installed")
    assert not (tmp_path / "installed").exists()
    (copy / "unet" / "config.json").unlink()
    with pytest.raises(ShippedWorldError, match=r"unet/config\.json is missing"):
        world.check("unet", world.entry("unet")["code_versions"])


def test_a_world_made_by_other_definitions_is_named_stale_with_both_ways_out(exported_world, tmp_path, monkeypatch):
    from augassets import cli
    from augassets.runner.command import materialize

    trained_profile, folder, _ = exported_world
    monkeypatch.setenv("AUGASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    trained_profile = located(trained_profile)  # at this test's home
    # Another pool: the shipped CLIP was trained on a different one.
    world = replace(
        trained_profile.world, shipped=str(folder), pool=replace(trained_profile.world.pool, distractors=21)
    )
    with pytest.raises(SystemExit) as stopped:
        materialize(replace(trained_profile, world=world), cli.foundation_keys, say=lambda *_: None)
    message = str(stopped.value)
    assert "is stale for clip_model" in message and "web_pool: shipped" in message
    assert "augassets foundation --rebuild" in message and "augassets world export" in message


def test_a_missing_world_names_the_way_to_train_it(tmp_path):
    with pytest.raises(ShippedWorldError, match="augassets foundation --rebuild"):
        ShippedWorld.open(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name", ["mini", "mini_all"])
def test_the_shipped_mini_world_matches_its_files_and_the_definitions_now(name):
    """What a fresh clone's `make run` installs: every shipped file intact, and every shipped model made by
    the definitions (settings and code versions, upstream included) that would train it now. mini_all
    installs the same world."""
    from augassets.assets.foundation import SHIPPED_FILES, lineage_versions
    from augassets.build import build_defs
    from augassets.profiles import get_profile

    profile = get_profile(name)
    assert profile.world.shipped, f"{name} trains its world instead of installing a shipped one"
    world = ShippedWorld.open(profile.world.shipped)
    graph = build_defs(profile, daemon=False).resolve_asset_graph()
    assert set(world.manifest["assets"]) == set(SHIPPED_FILES)
    for asset in SHIPPED_FILES:
        versions = lineage_versions(graph, dg.AssetKey(asset))
        assert world.stale_versions(asset, versions) == []
        world.check(asset, versions)  # sizes and SHA-256 of every file
    manifest = world.manifest
    assert manifest["profile"] == "mini" and manifest["stored_dtype"] == "float16"
    assert manifest["command"].startswith("AUGASSETS_PROFILE=mini augassets foundation --rebuild")
    # The calibration figures of the world, as measured where it was trained, travel with it.
    assert {
        "clip_model.zero_shot_top1",
        "fidelity_judge.judge_top1_holdout_web",
        "diffusion_fidelity.relative_class_fidelity",
    } <= set(manifest["calibration"])
    total = sum(f["bytes"] for entry in manifest["assets"].values() for f in entry["files"].values())
    assert total < 50 * 2**20, f"the shipped world takes {total / 2**20:.1f} MiB of the repository (budget 50 MiB)"


def test_the_mini_foundation_is_installed_from_the_shipped_world_without_training(tmp_path, monkeypatch):
    """The mini world's models come from the shipped files (checksums verified, nothing trained), with
    the pool they were trained on derived here again."""
    from augassets.profiles import get_profile
    from augassets.runner.command import materialize

    monkeypatch.setenv("AUGASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.delenv("AUGASSETS_WORLD", raising=False)
    profile = replace(get_profile("mini"), workers=1)  # nothing here is partitioned: no worker processes

    def select(defs):
        graph = defs.resolve_asset_graph()
        # CLIP, the VAE and the UNet (the judge installs by the same path, tested on smoke above; its upstream
        # trains the target classifier, which would double this test's time).
        chosen = dg.AssetSelection.assets("clip_model", "vae", "unet").upstream().resolve(graph)
        return [key for key in graph.toposorted_asset_keys if key in chosen and graph.get(key).is_executable]

    said = []
    materialize(profile, select, say=said.append)
    instance = dg.DagsterInstance.get()
    world = ShippedWorld.open(profile.world.shipped)
    for asset in ("clip_model", "vae", "unet"):
        metadata = instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata
        assert metadata["source"].value == f"shipped world {world.name}"
        assert metadata["manifest_sha256"].value == sha256_of(world.manifest_path)
        assert not any(key in metadata for key in ("losses", "train_seconds"))  # nothing trained here
    clip = instance.get_latest_materialization_event(dg.AssetKey("clip_model")).asset_materialization.metadata
    # Measured again on this home's test split: the half-precision copy keeps the trained world's figure.
    shipped = world.manifest["calibration"]["clip_model.zero_shot_top1"]
    assert abs(clip["zero_shot_top1"].value - shipped) < 0.01
    for folder in ("clip", "vae", "unet"):
        assert (profile.home / "store" / "models" / folder / "config.json").is_file()


def test_the_judge_keeps_its_own_spec_when_the_protocol_classifier_changes():
    """The mini judge is the world's (MiniWorldSpec.judge): a new input size or run count for the protocol's
    classifier re-derives the target-trained classifier but leaves the shipped judge's code version, and so the
    shipped world, as they were. Without a judge of its own (smoke), the judge follows the classifier."""
    from augassets.build import build_defs
    from augassets.profiles import get_profile

    def versions(profile):
        graph = build_defs(profile, daemon=False).resolve_asset_graph()
        return {name: graph.get(dg.AssetKey(name)).code_version for name in ("fidelity_judge", "fidelity_classifier")}

    mini = get_profile("mini")
    assert mini.judge_classifier.image_size == 28 and mini.classifier.image_size == 20
    bigger = replace(mini, classifier=replace(mini.classifier, image_size=24, replicates=7))
    before, after = versions(mini), versions(bigger)
    assert after["fidelity_judge"] == before["fidelity_judge"]
    assert after["fidelity_classifier"] != before["fidelity_classifier"]

    smoke = get_profile("smoke")
    assert smoke.world.judge is None
    plateau, early_stop = smoke.world.judge_patience
    assert smoke.judge_classifier == replace(smoke.classifier, plateau_patience=plateau, early_stop_patience=early_stop)
    wider = replace(smoke, classifier=replace(smoke.classifier, image_size=24))
    assert versions(wider)["fidelity_judge"] != versions(smoke)["fidelity_judge"]


def test_each_checkpoint_is_classified_at_its_own_input_size(tmp_path):
    """classify_paths decodes each file once and runs every checkpoint with the spec it was trained with."""
    import torch
    from PIL import Image

    from augassets.core.classifier import build_model
    from augassets.core.generation import classify_images, classify_paths
    from augassets.profiles import MINI_CLASSIFIER, MINI_JUDGE

    torch.manual_seed(0)
    state = build_model(MINI_JUDGE, 10).state_dict()  # the small ResNet takes any input size
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)) for _ in range(40)]
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    got = classify_paths({"judge": (state, MINI_JUDGE), "target": (state, MINI_CLASSIFIER)}, 10, paths, batch_size=16)
    assert np.array_equal(got["judge"], classify_images(state, MINI_JUDGE, 10, images))
    assert np.array_equal(got["target"], classify_images(state, MINI_CLASSIFIER, 10, images))
    assert not np.array_equal(got["judge"], got["target"])  # the input size matters to the predictions
