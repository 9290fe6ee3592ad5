"""What the stages materialize on `smoke`: definitions and lineage, the main command's tables, retrieval and
generated images, the foundation, bad input skipped and counted, and worker chunks that give the numbers of one
process."""

from dataclasses import replace
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from augassets import cli
from augassets.build import build_defs, build_stages
from augassets.core.warehouse import Warehouse
from augassets.profiles import PROFILES, get_profile
from augassets.resources import ImageStoreResource, WarehouseResource
from augassets.runner import runs as runner
from augassets.runner.command import materialize
from augassets.runner.workers import split_guided
from augassets.tags import ASSETS_TAG, PARTITION_RANGE_START_TAG

from .helpers import SMOKE, _folder_profile, defs

STAGES = ["class_catalog", "dataset_splits", "augmented_datasets", "classifier_scores", "results_table"]
RETRIEVAL_LINEAGE = [
    ("web_pool", "clip_model"),
    ("clip_model", "pool_index"),
    ("class_catalog", "class_prompts"),
    ("class_prompts", "augmentation_images"),
    ("pool_index", "augmentation_images"),
    ("augmentation_images", "excluded_classes"),
    ("excluded_classes", "augmented_datasets"),
    ("augmentation_images", "duplicate_report"),
    ("duplicate_report", "duplicate_summary"),
]


def test_definitions_lineage_and_pools():
    graph = defs.resolve_asset_graph()
    for upstream, downstream in [*zip(STAGES, STAGES[1:]), *RETRIEVAL_LINEAGE]:
        assert dg.AssetKey(upstream) in graph.get(dg.AssetKey(downstream)).parent_keys, (upstream, downstream)
    pools = {key.path[-1]: graph.get(key).pools for key in graph.get_all_asset_keys()}
    assert pools["classifier_scores"] == {"gpu"}
    # Table writers need no pool: each partition is its own Parquet file (core/warehouse.py).
    assert set().union(*pools.values()) == {"gpu"}, pools
    assert not pools["dataset_splits"] and not pools["class_catalog"]
    for name in STAGES:
        node = graph.get(dg.AssetKey(name))
        assert node.code_version and node.description, name


def test_definitions_come_from_the_profile_passed_and_public_dagster_only():
    """build_defs reads nothing from the environment; no module reads a profile at import time or
    imports Dagster's private modules."""
    package = Path(cli.__file__).parent
    for path in package.rglob("*.py"):
        source = path.read_text()
        assert "dagster._" not in source, f"{path}: private Dagster import"
        if path.name not in ("profiles.py", "definitions.py", "cli.py"):
            assert "get_profile(" not in source, f"{path} reads the active profile"
    mini = build_defs(get_profile("mini"))
    versions = {
        name: graph.get(dg.AssetKey("classifier_scores")).code_version
        for name, graph in (("smoke", defs.resolve_asset_graph()), ("mini", mini.resolve_asset_graph()))
    }
    assert versions["smoke"] != versions["mini"], "the classifier settings differ, so must the code versions"
    replicates = mini.resolve_assets_def("classifier_scores").partitions_def.get_partitions_def_for_dimension(
        "replicate"
    )
    assert replicates.get_partition_keys() == [str(r) for r in range(get_profile("mini").classifier.replicates)]
    external = build_defs(get_profile("imagenet10")).resolve_asset_graph()
    assert not external.get(dg.AssetKey("diffusion_model")).is_materializable, (
        "real profiles: the foundation is external"
    )
    for name in PROFILES:  # what a code server does on load: every job resolves (one partitions definition per job)
        jobs = {job.name for job in build_defs(get_profile(name)).resolve_all_job_defs()}
        assert {"report", "train_classifiers"} <= jobs, name
    baselines = build_defs(replace(SMOKE, methods=("real_p", "real_2p")))
    keys = {key.to_user_string() for key in baselines.resolve_asset_graph().get_all_asset_keys()}
    assert {"augmented_datasets", "classifier_scores", "results_table"} <= keys and not keys & {
        "augmentation_images",
        "excluded_classes",
    }
    assert baselines.resolve_assets_def("classifier_scores").partitions_def.get_partitions_def_for_dimension(
        "method"
    ).get_partition_keys() == ["real_p", "real_2p"]


def test_main_command_materializes_baselines_and_retrieval(benchmark_run):
    profile, table = benchmark_run
    assert profile.name == "smoke"
    db = Warehouse(profile.tables)
    results = db.query("SELECT * FROM results_table")
    assert results["method"].to_list() == [
        "real_p",
        "real_2p",
        "boomerang",
        "simple_prompt",
        "simple_prompt_nows",
        "clip_prompts",
        "sariyildiz_prompts",
        "ft_conditioning",
        "ft_cluster_conditioning",
        "imagic",
        "textual_inversion",
        "pseudoword_dm",
        "retrieval",
    ]
    replicates = profile.classifier.replicates
    assert results["n_runs"].to_list() == [replicates] * 13
    scores = db.query("SELECT method, test_top1 FROM classifier_scores")
    for row in results.iter_rows(named=True):
        runs = scores.filter(pl.col("method") == row["method"])["test_top1"]
        assert row["top1_mean"] == pytest.approx(runs.mean()) and row["top1_se"] == pytest.approx(
            runs.std(ddof=1) / replicates**0.5
        )
    assert "| real_p |" in table and "| retrieval |" in table and "Excluded classes" in table
    assert "ft_cluster_conditioning" in set(
        results["method"]
    )  # smoke runs every row: the paper's k ablation is beside ⑥'s
    assert (
        "The paper's Fine-tuned cluster conditioning ⑥ by clusters (top-1 %): 1 → 60.8 (derived); 5 → 60.9 ± 0.2"
        in table
    )
    domain = db.query("SELECT * FROM domain_match")
    assert set(domain["method"]) == set(results["method"]) - {"real_p", "real_2p"} | {"real_extra (reference)"}
    assert domain["separability"].is_between(0, 1).all() and (domain["images_per_side"] > 0).all()
    assert "Domain match (accuracy of telling the method's images from the target's" in table

    scores = db.query("SELECT * FROM classifier_scores")
    assert scores.height == 13 * replicates
    assert scores.filter(pl.col("method") == "real_2p")["train_images"].unique().to_list() == [
        2 * scores.filter(pl.col("method") == "real_p")["train_images"][0]
    ]
    per_class = db.query("SELECT * FROM per_class_scores")
    assert per_class.height == 13 * replicates * 3
    for checkpoint in scores["checkpoint"]:
        assert (profile.home / "store").as_posix() in checkpoint

    instance = dg.DagsterInstance.get()
    splits_event = instance.get_latest_materialization_event(dg.AssetKey("dataset_splits"))
    metadata = splits_event.asset_materialization.metadata
    assert metadata["classes"].value == 3
    assert metadata["target_images"].value == metadata["val_images"].value == metadata["real_extra_images"].value
    assert "data:image/png;base64," in metadata["target_sample_grid"].value
    results_event = instance.get_latest_materialization_event(dg.AssetKey("results_table"))
    assert "real_2p" in results_event.asset_materialization.metadata["results"].value
    # Each classifier step names the machine it trained on and its training kernels' fingerprint.
    from augassets.core.classifier import kernel_fingerprint

    trained = instance.get_latest_materialization_event(dg.AssetKey("classifier_scores")).asset_materialization.metadata
    threads = profile.partition_threads or profile.torch_threads
    assert trained["threads"].value == threads
    assert trained["training_kernel_fingerprint"].value == kernel_fingerprint(profile.classifier, threads)
    assert trained["machine"].value.endswith(" CPUs")
    assert (profile.home / "store" / "reports" / "results_table.csv").is_file()
    # Assets requested together over the same partitions run together: the profile's partitions are
    # exactly its grid, so each partitioned stage is one run over all of its partitions.
    # A classifier's training set and its run share one partition (method × replicate): one run for both.
    stages = (
        ("class_prompts", 11 * 3),
        ("personalized_models", 3 * 3),
        ("candidate_images", 3 * 3),
        ("personalized_unets", 2),
        ("unet_candidate_images", 2 * 3),
        ("checkpoint_selection", 5 * 3),
        ("augmentation_images,duplicate_report", 11 * 3),
        ("augmented_datasets,classifier_scores", 13 * replicates),
    )
    for assets, partitions in stages:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={ASSETS_TAG: assets}))
        assert len(runs) == 1, assets
        materialized = instance.get_records_for_run(
            runs[0].run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        assert len(materialized) == partitions * len(assets.split(",")), assets


def test_a_ratio_the_pool_cannot_fill_names_its_short_classes(private_state, monkeypatch):
    """Scaling retrieval to 8× the target's size asks for more than smoke's pool holds per class
    (40 images, some failing the filters): the cell names each short class with its counts and, as the
    paper does, leaves them out of its training and evaluation, bounding its accuracy over every class
    by their test images counted all wrong (worst) or all right (best); generation is never short, and
    pseudo-word + DM (⑨) scales from each class's chosen checkpoint."""
    monkeypatch.setenv("AUGASSETS_SCALING_RATIOS", "1,8")
    profile = get_profile()
    cli.benchmark(profile, say=lambda *_: None)
    db = Warehouse(profile.tables)
    cells = {(r["method"], r["ratio"]): r for r in db.query("SELECT * FROM scaling_table").iter_rows(named=True)}
    assert set(cells) == {(m, r) for m in ("simple_prompt", "pseudoword_dm", "retrieval") for r in (0.0, 1.0, 8.0)}
    # ⑨ scales from the checkpoint checkpoint_selection chose for each class, never from another candidate.
    scaled = db.query(
        "SELECT DISTINCT s.wnid, s.candidate, c.candidate AS chosen FROM scaling_manifest s "
        "JOIN (SELECT DISTINCT method, wnid, candidate FROM checkpoint_selection) c USING (method, wnid) "
        "WHERE s.method = 'pseudoword_dm'"
    )
    assert scaled.height == 3 and (scaled["candidate"] == scaled["chosen"]).all()
    assert cells["pseudoword_dm", 8.0]["n_runs"] == 2 and cells["pseudoword_dm", 8.0]["short_classes"] is None
    short = cells["retrieval", 8.0]
    # The classes the cell kept are filled: it trains on all it wants of them.
    assert short["short_classes"] and short["augmentation_images"] == short["wanted_augmentation_images"]
    have = db.query("SELECT wnid, count(*) AS n FROM scaling_manifest WHERE method = 'retrieval' GROUP BY wnid")
    want = dict(
        db.query("SELECT wnid, 8 * count(*) AS n FROM dataset_splits WHERE split = 'target' GROUP BY wnid").iter_rows()
    )
    named = 0
    for row in have.iter_rows(named=True):
        if row["n"] < want[row["wnid"]]:
            assert f"{row['wnid']} ({row['n']} of {want[row['wnid']]})" in short["short_classes"]
            named += 1
        else:
            assert row["wnid"] not in short["short_classes"]
    assert named == short["short_classes"].count(" of ") == short["excluded_short_classes"] >= 1
    assert cells["simple_prompt", 8.0]["short_classes"] is None and cells["retrieval", 1.0]["short_classes"] is None
    # The bounds: the short classes' share of the test images is exactly the gap between them.
    tests = db.query("SELECT wnid, count(*) AS n FROM dataset_splits WHERE split = 'test' GROUP BY wnid")
    out = sum(r["n"] for r in tests.iter_rows(named=True) if r["wnid"] in short["short_classes"])
    share = out / int(tests["n"].sum())
    assert short["top1_best"] - short["top1_worst"] == pytest.approx(share)
    if short["top1_mean"] is not None:  # some class could fill the ratio: the cell trained on it
        assert short["top1_worst"] == pytest.approx(short["top1_mean"] * (1 - share))
    for cell in (cells["retrieval", 1.0], cells["simple_prompt", 8.0]):
        assert cell["excluded_short_classes"] == 0 and cell["top1_worst"] == cell["top1_best"] == cell["top1_mean"]


def test_retrieval_images_manifest_and_duplicates(benchmark_run):
    profile, _ = benchmark_run
    db = Warehouse(profile.tables)
    manifest = db.query("SELECT * FROM augmentation_manifest WHERE method = 'retrieval'")
    target = db.query("SELECT wnid, count(*) AS n FROM dataset_splits WHERE split = 'target' GROUP BY wnid")
    n = int(target["n"].max())
    assert set(manifest.group_by("wnid").len()["len"]) == {n}
    assert all(Path(p).is_file() for p in manifest["path"])
    assert (
        manifest.group_by("wnid").agg(pl.col("similarity").diff().drop_nulls().max())["similarity"] <= 1e-6
    ).all(), "most similar first"
    pool = db.query("SELECT pool_id, aesthetic, nsfw FROM web_pool")
    joined = manifest.join(pool, on="pool_id", suffix="_pool")
    assert (joined["aesthetic_pool"] >= 5).all() and not joined["nsfw"].any()
    retrieval_sets = db.query(
        "SELECT wnid, origin, count(*) AS n FROM augmented_datasets WHERE method = 'retrieval' AND replicate = "
        "0 GROUP BY ALL"
    )
    per_class = retrieval_sets.pivot(on="origin", index="wnid", values="n")
    assert (per_class["target"] == per_class["retrieval"]).all(), "extra images per class = the target's count"

    instance = dg.DagsterInstance.get()
    summary = instance.get_latest_materialization_event(dg.AssetKey("duplicate_summary")).asset_materialization.metadata
    assert summary["detector_recall"].value >= 0.95 and summary["detector_precision"].value >= 0.5
    assert (
        summary["threshold_source"].value == "planted"
        and summary["hamming_threshold"].value < profile.duplicates.max_calibration_threshold
    )
    leak = instance.get_latest_materialization_event(dg.AssetKey("leak_threshold")).asset_materialization.metadata
    assert leak["calibration_copies"].value == profile.duplicates.calibration_copies > 0
    assert leak["hash_bits"].value == profile.duplicates.hash_size**2 == 256
    curve = db.query("SELECT * FROM leak_detector_curve ORDER BY threshold")
    assert curve["recall"].is_sorted() and curve.height == profile.duplicates.max_calibration_threshold
    hashes = instance.get_latest_materialization_event(dg.AssetKey("reference_hashes")).asset_materialization.metadata
    assert hashes["imagehash_agreement"].value >= 0.99
    unused = set(db.query("SELECT item FROM reference_hashes WHERE split = 'unused_train'")["item"])
    splits = db.query("SELECT split, item FROM dataset_splits")
    assert set(splits.filter(pl.col("split") == "real_extra")["item"]) <= unused, (
        "real_2p's extra images are unused by the target"
    )
    assert not set(splits.filter(pl.col("split").is_in(["target", "val"]))["item"]) & unused
    assert (
        summary["planted_duplicates"].value
        == profile.world.pool.planted_test_duplicates + profile.world.pool.planted_val_duplicates
    )
    for r in db.query("SELECT * FROM duplicate_summary").iter_rows(named=True):
        line = (
            f"- {r['method']}: {r['matched_reference_images']} of {r['reference_images']:,} {r['split']} images have a "
            f"near-duplicate among {r['augmentation_images']:,} augmentation images"
        )
        assert line in summary["summary"].value
    evaluations = [
        record.event_log_entry.dagster_event.event_specific_data
        for run in instance.get_runs()
        for record in instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
    ]
    by_check = {e.check_name: e.passed for e in evaluations}
    worst_test_leak = float(db.query("SELECT max(leak_rate) AS r FROM duplicate_summary WHERE split = 'test'")["r"][0])
    assert by_check == {
        "augmentation_images_are_valid": True,
        "leak_detector_is_discriminative": True,
        "judge_agrees_with_ground_truth": by_check["judge_agrees_with_ground_truth"],  # exact cases: test below
        # The smoke pool is small and holds planted test duplicates: whether retrieval picked some decides.
        "leak_into_test_split_is_rare": worst_test_leak <= profile.duplicates.max_test_leak_rate,
    }


def test_generated_images_prompts_seeds_and_resampled_sets(benchmark_run):
    profile, _ = benchmark_run
    db = Warehouse(profile.tables)
    n = int(
        db.query(
            "SELECT max(n) AS n FROM (SELECT count(*) AS n FROM dataset_splits WHERE split = 'target' GROUP BY wnid)"
        )["n"][0]
    )
    manifest = db.query("SELECT * FROM augmentation_manifest WHERE method != 'retrieval'")
    per_partition = manifest.group_by("method", "wnid").agg(
        pl.len().alias("images"), pl.col("seed").n_unique().alias("seeds")
    )
    assert per_partition.height == 10 * 3  # Boomerang, the four prompt methods and the five personalized ones
    assert (per_partition["images"] == profile.generation.factor * n).all(), "3× the largest class per class"
    assert (per_partition["seeds"] == per_partition["images"]).all(), "one recorded seed per image"
    assert all(Path(p).is_file() for p in manifest["path"])
    families = db.query(
        "SELECT wnid, family, count(*) AS n FROM class_prompts WHERE method = 'sariyildiz_prompts' GROUP BY ALL"
    )
    assert families.group_by("wnid").agg((pl.col("n").max() - pl.col("n").min()).alias("spread"))["spread"].max() <= 1
    assert set(families["family"]) == {
        "name",
        "name_hypernym",
        "multiple",
        "multiple_different",
        "name_definition",
        "name_hypernym_background",
    }
    sets = db.query(
        "SELECT replicate, path FROM augmented_datasets WHERE method = 'clip_prompts' AND origin = 'clip_prompts'"
    )
    replicates = profile.classifier.replicates
    draws = {r: frozenset(sets.filter(pl.col("replicate") == r)["path"]) for r in range(replicates)}
    assert len(set(draws.values())) == replicates, "a different resampled set per replicate"
    target_total = db.query("SELECT count(*) AS n FROM dataset_splits WHERE split = 'target'")["n"][0]
    assert all(len(d) == target_total for d in draws.values())
    fidelity = db.query("SELECT * FROM class_fidelity")
    assert fidelity.height == 11 * 3
    assert fidelity["fidelity"].is_between(0, 1).all() and fidelity["target_recognizability"].is_between(0, 1).all()
    retrieved = fidelity.filter(pl.col("method") == "retrieval")
    assert retrieved["ground_truth_precision"].is_between(0, 1).all(), "retrieval reports its precision by ground truth"
    assert fidelity.filter(pl.col("method") != "retrieval")["ground_truth_precision"].is_null().all(), (
        "generated images have none"
    )
    # ground truth recomputed here from the pool's truth table
    truth = db.query(
        "SELECT m.wnid, avg(CASE WHEN t.kind != 'distractor' AND t.wnid = m.wnid THEN 1.0 ELSE 0.0 END) AS p "
        "FROM augmentation_manifest m JOIN web_pool_truth t USING (pool_id) WHERE m.method = 'retrieval' GROUP "
        "BY m.wnid"
    )
    joined = retrieved.join(truth, on="wnid")
    assert joined.height == 3 and ((joined["ground_truth_precision"] - joined["p"]).abs() < 1e-9).all()
    boomerang = db.query("SELECT wnid, source_image FROM class_prompts WHERE method = 'boomerang'")
    targets = db.query("SELECT wnid, path FROM dataset_splits WHERE split = 'target'")
    assert set(boomerang["source_image"]) == set(targets["path"]), "Boomerang starts from every target image"
    assert set(zip(boomerang["wnid"], boomerang["source_image"])) <= set(zip(targets["wnid"], targets["path"]))
    assert (fidelity.filter(pl.col("method") != "retrieval")["images"] == profile.generation.factor * n).all()


def _materialize_prepare(tmp_path, root, **kwargs):
    built = build_stages(_folder_profile(root))  # the definitions of another profile, side by side with smoke's
    return dg.materialize(
        [built.class_catalog, built.dataset_splits],
        resources={
            "warehouse": WarehouseResource(root=str(tmp_path / "tables")),
            "image_store": ImageStoreResource(root=str(tmp_path / "store")),
        },
        instance=dg.DagsterInstance.ephemeral(),
        **kwargs,
    )


def test_bad_files_are_counted_in_split_metadata(tmp_path, image_folder):
    result = _materialize_prepare(tmp_path, image_folder)
    assert result.success
    metadata = result.asset_materializations_for_node("dataset_splits")[0].metadata
    assert metadata["skipped_files"].value == 7
    assert metadata["skipped_by_reason"].value == {
        "empty": 1,
        "corrupt": 1,
        "truncated": 1,
        "non_rgb": 3,
        "too_large": 1,
    }
    skipped = Warehouse(tmp_path / "tables").query("SELECT * FROM split_skipped_files")
    assert skipped.height == 7


def test_a_class_folder_that_is_not_a_wnid_is_skipped_and_listed(tmp_path, image_folder):
    (image_folder / "train" / "n99999999").mkdir()
    result = _materialize_prepare(tmp_path, image_folder)
    metadata = result.asset_materializations_for_node("class_catalog")[0].metadata
    assert metadata["classes"].value == 2 and metadata["skipped_class_folders"].value == 1
    assert list(metadata["skipped_class_folder_reasons"].value) == ["n99999999"]


@pytest.fixture(scope="module")
def foundation_run(benchmark_run):
    profile, _ = benchmark_run
    result = defs.resolve_job_def("build_foundation").execute_in_process(instance=dg.DagsterInstance.get())
    return profile, result


def test_foundation_materializes_pool_clip_index_and_sd(foundation_run):
    import faiss
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor

    from augassets.core.clip import encode_texts
    from augassets.core.knn import LocalKnnIndex

    profile, result = foundation_run
    assert result.success
    store = profile.home / "store"
    db = Warehouse(profile.tables)

    pool = db.query("SELECT * FROM web_pool")
    truth = db.query("SELECT kind, duplicate_of_split, count(*) AS n FROM web_pool_truth GROUP BY ALL")
    planted = {
        r["duplicate_of_split"]: r["n"]
        for r in truth.filter(pl.col("kind") == "planted_duplicate").iter_rows(named=True)
    }
    assert planted == {
        "test": profile.world.pool.planted_test_duplicates,
        "val": profile.world.pool.planted_val_duplicates,
    }
    used = set(db.query("SELECT item FROM dataset_splits WHERE split != 'test'")["item"])
    pool_sources = set(db.query("SELECT source_item FROM web_pool_truth WHERE kind = 'class'")["source_item"])
    assert not used & pool_sources, "the pool must not contain target, val or real_2p images"

    clip_meta = result.asset_materializations_for_node("clip_model")[0].metadata
    assert 0.0 <= clip_meta["zero_shot_top1"].value <= 1.0
    assert 0.0 <= clip_meta["zero_shot_top1_ensemble"].value <= 1.0  # CLIP's 80 templates ensembled
    model = CLIPModel.from_pretrained(store / "models" / "clip")
    processor = CLIPProcessor.from_pretrained(store / "models" / "clip")
    assert len(processor.tokenizer) == 49_408 and (store / "models" / "clip" / "merges.txt").is_file()

    index = faiss.read_index(str(store / "pool_index" / "image.index"))
    assert index.ntotal == pool.height
    assert pl.read_parquet(store / "pool_index" / "metadata" / "metadata_0.parquet").height == pool.height
    query = encode_texts(model, processor.tokenizer, ["A photo of boot."])[0]
    hits = LocalKnnIndex(store / "pool_index").search(query, k=5)
    assert len(hits) == 5 and {"url", "caption", "aesthetic", "nsfw"} <= set(hits[0].metadata)

    safety_meta = result.asset_materializations_for_node("diffusion_model")[0].metadata
    for key in ("safety_precision_held_out", "safety_recall_held_out"):
        assert 0.0 <= safety_meta[key].value <= 1.0, key
    sd_meta = result.asset_materializations_for_node("diffusion_fidelity")[0].metadata
    for key in ("class_fidelity", "target_recognizability", "judge_top1_holdout_web"):
        assert 0.0 <= sd_meta[key].value <= 1.0, key
    assert sd_meta["relative_class_fidelity"].value == pytest.approx(
        sd_meta["class_fidelity"].value / sd_meta["judge_top1_holdout_web"].value
    )

    # The judge's images are made like the pool's but kept out of it and out of every split.
    judge_images = db.query("SELECT * FROM judge_images")
    sizes = dict(zip(("train", "val", "holdout"), profile.world.pool.judge_per_class))
    per_split = judge_images.filter(pl.col("domain") == "web").group_by("split", "wnid").len()
    assert all(n == sizes[split] for split, n in zip(per_split["split"], per_split["len"]))
    assert set(judge_images.filter(pl.col("split") == "holdout")["domain"]) == {"web"}
    assert not set(judge_images["item"]) & (
        used | pool_sources | set(db.query("SELECT item FROM dataset_splits")["item"])
    )
    assert all(Path(p).is_file() for p in judge_images["path"])
    judge_meta = result.asset_materializations_for_node("fidelity_judge")[0].metadata
    for key in ("judge_top1_test", "judge_top1_holdout_web"):
        assert 0.0 <= judge_meta[key].value <= 1.0, key
    transfer_meta = result.asset_materializations_for_node("domain_transfer")[0].metadata
    for key in ("target_classifier_top1_test", "target_classifier_top1_web"):
        assert 0.0 <= transfer_meta[key].value <= 1.0, key
    transfer = db.query("SELECT * FROM domain_transfer")
    assert transfer["web_transform"].to_list() == ["none", "geometry", "colour", "photometric", "background", "all"]
    ratio = transfer.filter(pl.col("web_transform") == "all")["transfer_ratio"][0]
    assert transfer_meta["domain_transfer_ratio"].value == pytest.approx(ratio)
    assert "data:image/png;base64," in sd_meta["samples"].value
    sd_folder = store / "models" / "stable_diffusion"
    assert isinstance(StableDiffusionPipeline.from_pretrained(sd_folder), StableDiffusionPipeline)
    assert isinstance(StableDiffusionImg2ImgPipeline.from_pretrained(sd_folder), StableDiffusionImg2ImgPipeline)


def test_corrupt_pool_rows_are_skipped_and_counted(private_state, tmp_path):
    """A pool image that no longer decodes and a row without a caption are skipped by CLIP training
    and the index (and counted in their metadata), not fatal."""
    profile, private_defs, instance = private_state, build_defs(private_state), dg.DagsterInstance.get()
    db = Warehouse(profile.tables)
    pool = db.query("SELECT pool_id, url FROM web_pool ORDER BY pool_id")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    db.replace(
        "web_pool",
        db.query("SELECT * FROM web_pool").with_columns(
            pl.when(pl.col("pool_id") == 5)
            .then(pl.lit(None, dtype=pl.Utf8))
            .otherwise(pl.col("caption"))
            .alias("caption"),
            pl.when(pl.col("pool_id") == 3).then(pl.lit(broken.as_uri())).otherwise(pl.col("url")).alias("url"),
        ),
    )
    result = private_defs.resolve_job_def("build_foundation").execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("clip_model"), dg.AssetKey("pool_index")]
    )
    assert result.success
    for node in ("clip_model", "pool_index"):
        metadata = result.asset_materializations_for_node(node)[0].metadata
        assert metadata["skipped_pool_rows"].value == {"corrupt": 1, "bad_caption": 1}, node
    index_meta = pl.read_parquet(profile.home / "store" / "pool_index" / "metadata" / "metadata_0.parquet")
    assert index_meta.height == pool.height - 2
    assert 3 not in index_meta["pool_id"].to_list() and 5 not in index_meta["pool_id"].to_list()


def test_one_failing_class_does_not_fail_the_others(private_state):
    """A class without its prompt fails with a message naming it; the other classes of the same run
    are materialized."""
    profile, private_defs, instance = private_state, build_defs(private_state), dg.DagsterInstance.get()
    db = Warehouse(profile.tables)
    wnids = db.query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"].to_list()
    db.replace("class_prompts", db.query("SELECT * FROM class_prompts").filter(pl.col("wnid") != wnids[1]))
    keys = frozenset(dg.MultiPartitionKey({"method": "retrieval", "wnid": w}) for w in wnids)
    group = runner.RunGroup((dg.AssetKey("augmentation_images"),), keys)
    with pytest.raises(runner.RunFailed) as failed:
        runner.execute(private_defs, instance, group, lambda *_: None)
    # The message a user sees is the asset's own, naming the partition and what to do, not Dagster's wrapper.
    message = str(failed.value)
    assert (
        f"1 of 3 partitions failed, the others are materialized: retrieval|{wnids[1]}: no prompt for "
        f"retrieval/{wnids[1]}: "
        "materialize class_prompts for this partition first" in message
    )
    assert "DagsterExecutionStepExecutionError" not in message and "Error occurred while executing" not in message
    run = instance.get_runs(filters=dg.RunsFilter(tags={ASSETS_TAG: "augmentation_images"}), limit=1)[0]
    keys = {
        r.event_log_entry.dagster_event.partition
        for r in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    }
    assert keys == {f"retrieval|{wnids[0]}", f"retrieval|{wnids[2]}"}
    failure = [
        r.event_log_entry
        for r in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    ]
    assert f"retrieval|{wnids[1]}" in str(failure[0].dagster_event.event_specific_data.error)


def test_guided_chunks_shrink_to_single_partitions_so_the_workers_end_together():
    """25 classifiers on two workers: a quarter of what is left each time, then single partitions, in
    order and each once (equal chunks of five left one worker idle for the last method's five)."""
    keys = [f"k{i:02d}" for i in range(25)]
    chunks = split_guided(keys, workers=2)
    assert [len(c) for c in chunks] == [7, 5, 4, 3, 2, 1, 1, 1, 1]
    assert [k for c in chunks for k in c] == keys
    assert split_guided(keys[:3], workers=4) == [["k00"], ["k01"], ["k02"]] and split_guided([], workers=2) == []


def test_worker_chunks_keep_a_per_method_assets_methods_whole(benchmark_run):
    """Chunks for workers: a class × method asset is cut into chunks of decreasing size down to single
    partitions, each a range Dagster reads as exactly its keys; checkpoint_selection, whose classifiers
    are per method (CHUNK_BY_TAG), gets one chunk per method, since two chunks of one method would each
    train all of its candidates' classifiers."""
    profile, _ = benchmark_run
    instance = dg.DagsterInstance.get()
    graph = defs.resolve_asset_graph()

    def covered(key, ranges):
        partitions_def = graph.get(key).partitions_def
        return [
            str(k)
            for start, end in ranges
            for k in partitions_def.get_partition_keys_in_range(
                dg.PartitionKeyRange(start, end), dynamic_partitions_store=instance
            )
        ]

    for name in ("augmentation_images", "checkpoint_selection"):
        key = dg.AssetKey(name)
        every = {str(k) for k in graph.get(key).partitions_def.get_partition_keys(dynamic_partitions_store=instance)}
        group = runner.RunGroup((key,), frozenset(every))
        one = runner.partition_ranges(defs, instance, group, workers=1)
        two = runner.partition_ranges(defs, instance, group, workers=2)
        assert len(one) == 1 and sorted(covered(key, one)) == sorted(every)
        assert sorted(covered(key, two)) == sorted(every), f"{name}: the chunks cover each partition once"
        methods = [{k.split("|")[0] for k in covered(key, [r])} for r in two]
        if name == "checkpoint_selection":
            assert all(len(m) == 1 for m in methods) and len(two) == len({m for ms in methods for m in ms}), two
        else:
            sizes = [len(covered(key, [r])) for r in two]
            # A chunk that crosses a method boundary reads as two boxes, so sizes can dip and rise once.
            assert max(sizes) <= -(-len(every) // 4) and sizes[-1] == 1 and len(two) >= 4, sizes


def test_worker_processes_run_a_groups_chunks_at_once_with_the_numbers_of_one_process(private_state, session_dir):
    """``Profile.workers``: the headless command cuts a partitioned group into chunks that worker
    processes run as concurrent Dagster runs on the same instance. Every simple-prompt partition
    deleted and rebuilt on two workers: generation and the classifiers ran as several runs, in the
    workers' processes (not the command's), the two classifier runs at the same time, and the images
    and tables are the very ones the one-process run made (smoke's steps use one thread either way)."""
    import hashlib
    import os
    import shutil

    profile = replace(private_state, methods=("real_p", "simple_prompt", "retrieval"), workers=2)
    assert (profile.partition_threads or profile.torch_threads) == 1  # one thread per step, one process or two
    instance = dg.DagsterInstance.get()
    # What earlier tests left stale, first, in one process: the reference the workers must match.
    materialize(replace(profile, workers=1), cli.benchmark_keys, say=lambda *_: None)
    db = Warehouse(profile.tables)
    images = profile.home / "store" / "images" / "simple_prompt"
    clean_images = {str(p.relative_to(images)): hashlib.sha1(p.read_bytes()).hexdigest() for p in images.rglob("*.png")}
    tables = {
        "augmentation_manifest": "SELECT * FROM augmentation_manifest ORDER BY method, wnid, rank",
        "classifier_scores": "SELECT * EXCLUDE (train_seconds, images_per_second) FROM classifier_scores "
        "ORDER BY method, replicate",
        "per_class_scores": "SELECT * FROM per_class_scores ORDER BY method, replicate, label",
    }
    clean_tables = {name: db.query(sql) for name, sql in tables.items()}
    shutil.rmtree(images)
    before = {run.run_id for run in instance.get_runs()}
    lines = []
    materialize(profile, cli.benchmark_keys, say=lines.append)
    log = "\n".join(lines)
    assert "pool gpu: limit raised to 2" in log, log
    launched = [run for run in instance.get_runs() if run.run_id not in before]

    def runs_of(asset):  # its chunks' runs (the run of its checks has no partitions)
        return [
            run
            for run in launched
            if asset in run.tags[ASSETS_TAG].split(",") and PARTITION_RANGE_START_TAG in run.tags
        ]

    def pids(run):
        return {
            record.dagster_event.pid
            for record in instance.all_logs(run.run_id)
            if record.dagster_event and record.dagster_event.pid
        }

    generation, training = runs_of("augmentation_images"), runs_of("classifier_scores")
    assert len(generation) == 3 and len(training) == 2, log  # three classes, two replicates: one chunk each
    assert "checks of augmentation_images" in log, "the asset's checks run once, after its chunks"
    for run in generation + training:
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert pids(run) and os.getpid() not in pids(run), "a chunk ran in the command's own process"
    assert len(set().union(*(pids(run) for run in generation + training))) == 2, (
        "two worker processes served the chunks"
    )
    spans = [instance.get_run_record_by_id(run.run_id) for run in training]
    assert max(r.start_time for r in spans) < min(r.end_time for r in spans), "the two classifier runs did not overlap"
    assert {
        str(p.relative_to(images)): hashlib.sha1(p.read_bytes()).hexdigest() for p in images.rglob("*.png")
    } == clean_images
    for name, sql in tables.items():
        assert db.query(sql).equals(clean_tables[name]), name
    # ... and the very scores the session's home holds: another home path, one process.
    scores = (
        "SELECT * EXCLUDE (train_seconds, images_per_second, checkpoint) FROM classifier_scores "
        f"WHERE method IN ({', '.join(repr(m) for m in profile.methods)}) ORDER BY method, replicate"
    )
    session_home = Warehouse(
        session_dir / "home" / profile.name / "store" / "tables"
    )  # the benchmark fixture's own home
    assert session_home.root != db.root
    assert db.query(scores).equals(session_home.query(scores))
    assert (
        db.query(tables["per_class_scores"])
        .filter(pl.col("method").is_in(profile.methods))
        .equals(session_home.query(tables["per_class_scores"]).filter(pl.col("method").is_in(profile.methods)))
    )

    # Groups of one evaluation that do not depend on each other run at once: their chunks share one
    # queue, the group cut into fewer chunks first, and each group's checks run after its chunks.
    from augassets.runner.workers import Workers

    profile_defs, graph = build_defs(profile), defs.resolve_asset_graph()

    def every(asset, method):
        keys = graph.get(dg.AssetKey(asset)).partitions_def.get_partition_keys(dynamic_partitions_store=instance)
        return frozenset(str(k) for k in keys if method in str(k).split("|"))

    generate = runner.RunGroup((dg.AssetKey("augmentation_images"),), every("augmentation_images", "simple_prompt"))
    train = runner.RunGroup((dg.AssetKey("classifier_scores"),), every("classifier_scores", "real_p"))
    before = {run.run_id for run in instance.get_runs()}
    lines = []
    with Workers(profile, 2) as workers:
        outcomes = runner.execute_on_workers(profile_defs, instance, [generate, train], lines.append, workers)
    log = "\n".join(lines)
    assert [o.group for o in outcomes] == [generate, train] and all(o.error is None for o in outcomes), log
    assert lines[0] == "  5 chunks of 2 groups on 2 worker processes", log
    assert "checks of augmentation_images" in log
    launched = [run for run in instance.get_runs() if run.run_id not in before]
    spans = {
        name: [
            instance.get_run_record_by_id(run.run_id)
            for run in launched
            if run.tags[ASSETS_TAG] == name and PARTITION_RANGE_START_TAG in run.tags
        ]
        for name in ("augmentation_images", "classifier_scores")
    }
    assert len(spans["augmentation_images"]) == 3 and len(spans["classifier_scores"]) == 2, log
    first_free = min(r.end_time for r in spans["classifier_scores"])
    assert all(r.start_time >= first_free for r in spans["augmentation_images"]), "the group of two chunks went first"
    assert sorted(run_id for o in outcomes for run_id in o.run_ids) == sorted(run.run_id for run in launched)
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in launched)
    assert {
        str(p.relative_to(images)): hashlib.sha1(p.read_bytes()).hexdigest() for p in images.rglob("*.png")
    } == clean_images
    for name, sql in tables.items():
        assert db.query(sql).equals(clean_tables[name]), name
