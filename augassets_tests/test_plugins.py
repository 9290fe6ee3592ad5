"""Method plugins: a package outside augassets adds a method through the ``augassets.methods`` entry
points, and the platform runs the whole study on it. The example package in ``examples/`` is installed
for real (``pip install --target``), next to a package of broken plugins written here."""

import importlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from augassets import cli
from augassets.build import build_defs
from augassets.core import methods as registry
from augassets.core.plugins import ClassInfo, ImageRequest, MethodPlugin, PluginError, PluginImage, make_partition
from augassets.core.warehouse import Warehouse
from augassets.runner import runs as runner

REPO = Path(__file__).resolve().parents[1]

BROKEN = """
from augassets.plugins import MethodPlugin
from PIL import Image


def make_images(request, resources):
    if request.cls.label == 1:
        raise RuntimeError("no images for this one")
    return [Image.new("RGB", (32, 32), (i % 255, 0, 0)) for i in request.indices]


FAILS_ON_ONE = MethodPlugin("fails_on_one", "Fails on one class", "test", "raises on the class of label 1", make_images)
NOT_A_PLUGIN = {"key": "not_a_plugin"}
"""
BROKEN_ENTRY_POINTS = """[augassets.methods]
fails_on_one = augassets_broken_plugins:FAILS_ON_ONE
not_a_plugin = augassets_broken_plugins:NOT_A_PLUGIN
cannot_import = augassets_broken_plugins.missing:METHOD
"""


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory):
    """The example plugin package pip-installed into a folder of its own, and a package of broken
    plugins beside it, both on ``sys.path`` (and PYTHONPATH, for worker processes) for this module."""
    import os

    site = tmp_path_factory.mktemp("plugins")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
        + [str(REPO / "examples" / "augassets-example-plugin")],
        check=True,
    )
    (site / "augassets_broken_plugins").mkdir()
    (site / "augassets_broken_plugins" / "__init__.py").write_text(BROKEN)
    info = site / "augassets_broken_plugins-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: augassets-broken-plugins\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(BROKEN_ENTRY_POINTS)
    sys.path.insert(0, str(site))
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), previous]))
    importlib.invalidate_caches()
    registry.refresh_plugins()
    yield site
    sys.path.remove(str(site))
    if previous is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = previous
    registry.refresh_plugins()


def test_installed_plugins_join_the_registry_and_broken_ones_are_named(installed_plugins):
    jitter = registry.get_method("example_jitter")
    assert jitter.builder == registry.PLUGIN and jitter.extra_images == registry.IMAGES and jitter.resample
    assert jitter.paper_label == "Target jitter (example plugin)"
    keys = [m.key for m in registry.registered_methods()]
    own = ["image_retrieval", "mmr_retrieval", "retrieval_img2img"]
    assert keys == [*registry.METHOD_KEYS, *own, "example_jitter", "fails_on_one"]
    assert registry.METHOD_KEYS == tuple(m.key for m in registry.METHODS), "the built-in rows stay thirteen"
    with pytest.raises(ValueError, match=r"'cannot_import' .* could not be loaded: ModuleNotFoundError"):
        registry.get_method("cannot_import")
    with pytest.raises(ValueError, match=r"'not_a_plugin' .* is a dict, not an augassets MethodPlugin"):
        registry.get_method("not_a_plugin")
    assert set(registry.plugin_problems()) == {"cannot_import", "not_a_plugin"}


def test_a_plugin_method_runs_through_the_whole_study(installed_plugins, private_state):
    """real_p and the example plugin: its images are made, checked and resampled like a built-in
    method's, its classifiers trained, and it has its row in the results table and its curve in the
    scaling analysis (100 % and 200 %)."""
    from augassets.assets.prompts import needed_per_class

    profile = replace(
        private_state,
        methods=("real_p", "example_jitter"),
        scaling=replace(private_state.scaling, ratios=(1.0, 2.0), methods=("example_jitter",)),
    )
    cli.benchmark(profile, say=lambda *_: None)
    db = Warehouse(profile.tables)
    manifest = db.query("SELECT * FROM augmentation_manifest WHERE method = 'example_jitter'")
    per_class = manifest.group_by("wnid").len()
    needed = (
        profile.generation.factor
        * db.query(
            "SELECT max(n) AS n FROM (SELECT count(*) AS n FROM dataset_splits WHERE split = 'target' GROUP BY wnid)"
        )["n"][0]
    )
    assert per_class.height == 3 and set(per_class["len"]) == {needed}
    target = db.query("SELECT path FROM dataset_splits WHERE split = 'target' LIMIT 1")["path"][0]
    assert all(Image.open(p).size == Image.open(target).size for p in manifest["path"]), "crops keep the size"
    assert set(manifest["family"]) == {"jitter"} and manifest["path_sha256"].n_unique() == manifest.height
    scores = db.query("SELECT * FROM classifier_scores WHERE method = 'example_jitter'")
    assert scores.height == profile.classifier.replicates
    results = db.query("SELECT method, paper_label FROM results_table")
    assert "example_jitter" in results["method"].to_list()
    assert "Target jitter (example plugin)" in results["paper_label"].to_list()
    scaled = db.query("SELECT wnid, count(*) AS n FROM scaling_manifest WHERE method = 'example_jitter' GROUP BY wnid")
    assert scaled.height == 3 and set(scaled["n"]) == {profile.generation.factor * 2 * needed_per_class(db, profile)}
    cells = db.query("SELECT * FROM scaling_scores WHERE method = 'example_jitter'")
    replicates = profile.scaling.replicates or profile.classifier.replicates
    assert cells.group_by("percent").len()["len"].to_list() == [replicates, replicates]
    assert cells["test_top1"].is_between(0, 1).all()


def test_a_failing_plugin_fails_its_class_only_naming_the_plugin_and_the_class(installed_plugins, private_state):
    profile = replace(private_state, methods=("real_p", "fails_on_one"))
    defs, instance = build_defs(profile), dg.DagsterInstance.get()
    wnids = Warehouse(profile.tables).query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"].to_list()
    keys = frozenset(dg.MultiPartitionKey({"method": "fails_on_one", "wnid": w}) for w in wnids)
    runner.execute(defs, instance, runner.RunGroup((dg.AssetKey("class_prompts"),), keys), lambda *_: None)
    group = runner.RunGroup((dg.AssetKey("augmentation_images"),), keys)
    with pytest.raises(runner.RunFailed) as failed:
        runner.execute(defs, instance, group, lambda *_: None)
    assert (
        f"1 of 3 partitions failed, the others are materialized: fails_on_one|{wnids[1]}: method plugin "
        f"'fails_on_one' failed on class {wnids[1]}" in str(failed.value)
    )
    assert "RuntimeError: no images for this one" in str(failed.value)
    made = Warehouse(profile.tables).query("SELECT wnid, count(*) AS n FROM augmentation_manifest GROUP BY wnid")
    assert set(made.filter(pl.col("n") > 0)["wnid"]) >= {wnids[0], wnids[2]}


def _numbered(calls: list, fail_at: int | None = None):
    def make_images(request: ImageRequest, resources) -> list[Image.Image]:
        calls.append(request.indices)
        if fail_at is not None and request.indices.start >= fail_at:
            raise KeyboardInterrupt  # a kill in the middle of the partition
        # numpy scalars in the record (as a KNN hit's similarity is) are stored as numbers
        return [
            PluginImage(Image.new("RGB", (8, 8), (i, request.image_seed(i) % 256, 0)), similarity=np.float32(i / 10))
            for i in request.indices
        ]

    return make_images


CLASS = ClassInfo("n00000001", 0, "thing", ("thing",), "a thing", "object", "A photo of thing.", "A photo of thing.")


def test_a_plugin_partition_resumes_after_a_kill_and_replaces_flagged_images(tmp_path):
    """Chunks finished before a kill are not asked for again, and the partition ends with the same
    files as one made without a kill; images the safety checker flags are replaced by later indices."""
    request = ImageRequest("made", CLASS, (), 10, 0, range(0))

    def flags(images):
        return [image.getpixel((0, 0))[0] == 3 for image in images]  # image 3 is "NSFW"

    calls: list[range] = []
    plugin = MethodPlugin("made", "Made", "test", "numbered squares", _numbered(calls), chunk=4)
    whole, flagged = make_partition(plugin, request, None, tmp_path / "whole" / "made", flags)
    assert flagged == 1 and [r["index"] for r in whole] == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert whole[3]["similarity"] == pytest.approx(0.4)
    assert calls == [range(0, 4), range(4, 8), range(8, 11)]

    killed: list[range] = []
    interrupted = MethodPlugin("made", "Made", "test", "numbered squares", _numbered(killed, fail_at=8), chunk=4)
    with pytest.raises(KeyboardInterrupt):
        make_partition(interrupted, request, None, tmp_path / "resumed" / "made", flags)
    resumed_calls: list[range] = []
    plugin = MethodPlugin("made", "Made", "test", "numbered squares", _numbered(resumed_calls), chunk=4)
    resumed, _ = make_partition(plugin, request, None, tmp_path / "resumed" / "made", flags)
    assert resumed_calls == [range(8, 11)], "the finished chunks are not made again"
    assert [Path(r["path"]).read_bytes() for r in resumed] == [Path(r["path"]).read_bytes() for r in whole]
    assert not (tmp_path / "resumed" / "made.partial").exists()


def test_a_plugin_that_breaks_the_contract_is_named(tmp_path):
    request = ImageRequest("liar", CLASS, (), 4, 0, range(0))
    too_many = MethodPlugin("liar", "Liar", "test", "", lambda r, _: [Image.new("RGB", (4, 4))] * 9)
    with pytest.raises(PluginError, match="'liar' returned 9 images for class n00000001 where 4 were asked for"):
        make_partition(too_many, request, None, tmp_path / "a" / "liar")
    not_images = MethodPlugin("liar", "Liar", "test", "", lambda r, _: ["a path"] * len(r.indices))
    with pytest.raises(PluginError, match="image 0 of class n00000001 is a str, not a PIL image"):
        make_partition(not_images, request, None, tmp_path / "b" / "liar")
    short = MethodPlugin("liar", "Liar", "test", "", lambda r, _: [Image.new("RGB", (4, 4))] * 2, chunk=3)
    made, _ = make_partition(short, request, None, tmp_path / "c" / "liar")
    assert len(made) == 2, "a plugin that runs out stops being asked: the class is short"


def test_mmr_takes_the_most_relevant_first_and_skips_near_copies():
    from augassets.core.extensions import mmr_order

    embeddings = np.array([[1.0, 0.0], [0.999, 0.045], [0.0, 1.0], [0.6, 0.8]])
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    relevance = np.array([0.9, 0.89, 0.5, 0.7])
    assert mmr_order(relevance, embeddings, 4, weight=1.0) == [0, 1, 3, 2], "weight 1: plain nearest neighbours"
    assert mmr_order(relevance, embeddings, 2, weight=0.7)[:2] == [0, 2], "the near-copy of the best waits"


def test_the_three_extension_methods_make_their_images_on_smoke(private_state):
    """Image-queried retrieval, MMR retrieval and retrieval → img2img through the plugin path on the smoke
    world: full partitions of distinct pool images; MMR's sets less redundant than plain retrieval's; the
    hybrid's images start from retrieved ones and are new files."""
    from augassets.assets.prompts import images_per_class
    from augassets.core.knn import LocalKnnIndex

    own = ("image_retrieval", "mmr_retrieval", "retrieval_img2img")
    profile = replace(private_state, methods=("real_p", *own, "retrieval"))
    defs, instance = build_defs(profile), dg.DagsterInstance.get()
    db = Warehouse(profile.tables)
    wnids = db.query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"].to_list()
    keys = frozenset(dg.MultiPartitionKey({"method": m, "wnid": w}) for m in own for w in wnids)
    runner.execute(
        defs, instance, runner.RunGroup((dg.AssetKey("class_prompts"), dg.AssetKey("augmentation_images")), keys), print
    )
    manifest = db.query("SELECT * FROM augmentation_manifest")
    n = images_per_class(db, "retrieval", profile)
    for method in own:
        rows = manifest.filter(pl.col("method") == method).group_by("wnid").len()
        assert rows["len"].to_list() == [images_per_class(db, method, profile)] * len(wnids), method
    for method in ("image_retrieval", "mmr_retrieval"):
        rows = manifest.filter(pl.col("method") == method)
        assert rows.group_by("wnid").agg(pl.col("pool_id").n_unique())["pool_id"].to_list() == [n] * len(wnids)
    index = LocalKnnIndex(profile.home / "store" / "pool_index")

    def redundancy(method: str) -> float:
        """Mean over classes of the mean pairwise CLIP similarity within the class's set."""
        values = []
        for wnid in wnids:
            ids = manifest.filter((pl.col("method") == method) & (pl.col("wnid") == wnid))["pool_id"].to_list()
            e = index.embeddings(ids)
            values.append(float((e @ e.T)[np.triu_indices(len(ids), 1)].mean()))
        return float(np.mean(values))

    assert redundancy("mmr_retrieval") < redundancy("retrieval")
    hybrid = manifest.filter(pl.col("method") == "retrieval_img2img")
    assert hybrid["seed"].null_count() == 0 and hybrid["pool_id"].null_count() == 0
    pool = set(db.query("SELECT path_sha256 FROM augmentation_manifest WHERE method = 'retrieval'")["path_sha256"])
    assert not pool & set(hybrid["path_sha256"]), "img2img makes new images, not copies"
