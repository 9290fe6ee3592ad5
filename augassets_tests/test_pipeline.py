"""The Dagster layer: definitions, the main command end to end on `smoke`, caching, bad input."""

from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from augassets import cli
from augassets.build import build_defs, build_stages
from augassets.core.warehouse import Warehouse
from augassets.profiles import IMAGE_FOLDER, PROFILES, SplitSpec, get_profile
from augassets.resources import ImageStoreResource, WarehouseResource
from augassets.runner import runs as runner
from augassets.runner.command import materialize
from augassets.tags import ASSETS_TAG, PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

SMOKE = get_profile("smoke")
defs = build_defs(SMOKE)

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


def test_the_analyses_set_table_1_beside_the_papers_and_write_a_report_with_figures(benchmark_run):
    """Table 1 side by side (the paper's figures, gains over real_p with 95 % intervals, shares of the
    real_p → real_2p gap), per-class gains with their correlations, the sample grid and report.html."""
    profile, table = benchmark_run
    db = Warehouse(profile.tables)
    results = {r["method"]: r for r in db.query("SELECT * FROM results_table").iter_rows(named=True)}
    assert results["retrieval"]["paper_top1"] == pytest.approx(0.626) and results["real_p"][
        "paper_top1"
    ] == pytest.approx(0.572)
    base, upper = results["real_p"], results["real_2p"]
    for method, row in results.items():
        assert row["gain"] == pytest.approx(row["top1_mean"] - base["top1_mean"])
        if upper["top1_mean"] != base["top1_mean"]:
            assert row["gap_share"] == pytest.approx(row["gain"] / (upper["top1_mean"] - base["top1_mean"]))
        assert row["top1_ci95"] is not None and row["top1_ci95"] >= 0  # smoke has two replicates
        assert (row["gain_ci95"] is None) == (method == "real_p")
    assert "| paper top-1 (imagenet_10pct) |" in table and "| retrieval | Retrieval |" in table

    gains = db.query("SELECT * FROM per_class_gains")
    per_class = db.query("SELECT method, wnid, avg(test_top1) AS mean FROM per_class_scores GROUP BY method, wnid")
    means = {(r["method"], r["wnid"]): r["mean"] for r in per_class.iter_rows(named=True)}
    assert gains.height == 12 * 3 and set(gains["method"]) == set(results) - {"real_p"}
    for row in gains.iter_rows(named=True):
        assert row["gain"] == pytest.approx(means[row["method"], row["wnid"]] - means["real_p", row["wnid"]])
    correlations = db.query("SELECT * FROM gain_correlations")
    assert set(correlations["method"]) == set(gains["method"]) and (correlations["classes"] == 3).all()
    # Fig. 5A as the paper draws it: ⑨ and retrieval, each one's worst and best classes (2 of each of 3 classes).
    extremes = db.query("SELECT * FROM per_class_extremes")
    for method in ("pseudoword_dm", "retrieval"):
        mine = gains.filter(pl.col("method") == method).sort("gain", "wnid")
        worst = extremes.filter((pl.col("method") == method) & (pl.col("extreme") == "worst")).sort("rank")
        best = extremes.filter((pl.col("method") == method) & (pl.col("extreme") == "best")).sort("rank")
        assert (
            worst["wnid"].to_list() == mine["wnid"].to_list()[:2]
            and best["wnid"].to_list() == mine["wnid"].to_list()[::-1][:2]
        )
    similarity = db.query(
        "SELECT wnid, avg(similarity) AS similarity FROM augmentation_manifest WHERE method = 'retrieval' GROUP BY wnid"
    )
    joined = gains.filter(pl.col("method") == "retrieval").join(similarity, on="wnid")
    with np.errstate(all="ignore"):
        expected = np.corrcoef(joined["gain"].to_numpy(), joined["similarity"].to_numpy())[0, 1]
    got = correlations.filter(pl.col("method") == "retrieval")["r_gain_retrieval_similarity"][0]
    assert (got is None) if np.isnan(expected) else got == pytest.approx(expected)
    versus = db.query("SELECT * FROM retrieval_vs_diffusion")
    assert versus.height == 3 and versus["diffusion_method"].n_unique() == 1

    # Compute accounting: every classifier run's row matches what the run itself reports.
    log = db.query("SELECT * FROM compute_log")
    runs = db.query("SELECT method, replicate, train_images, epochs_run, train_seconds FROM classifier_scores")
    trained = log.filter(pl.col("stage") == "train classifier").with_columns(
        pl.col("partition").str.extract(r"^([a-z0-9_]+)\|", 1).alias("method"),
        pl.col("partition").str.extract(r"\|(\d+)$", 1).cast(pl.Int64).alias("replicate"),
    )
    joined = trained.join(runs, on=["method", "replicate"])
    assert joined.height == runs.height == 13 * profile.classifier.replicates
    assert (joined["images"] == joined["train_images"] * joined["epochs_run"]).all()
    assert (joined["seconds"] >= joined["train_seconds"]).all() and (joined["device"] == "cpu").all()
    assert {
        "generate",
        "retrieve",
        "fine-tune",
        "generate candidates",
        "select checkpoint",
        "embed pool",
        "judge",
        "embed",
    } <= set(log["stage"])
    extrapolated = {
        (r["stage"], r["method"]): r for r in db.query("SELECT * FROM compute_extrapolation").iter_rows(named=True)
    }
    generate = extrapolated["generate", "simple_prompt"]
    assert (
        generate["paper_scale_images"] == 990 * 390
        and generate["paper_hours"] == 867.0
        and generate["paper_hours_kind"] == "reported"
    )
    assert generate["extrapolated_hours"] == pytest.approx(990 * 390 * generate["measured_seconds_per_image"] / 3600)
    assert extrapolated["train classifier", "real_p"]["paper_hours_kind"] == "derived"  # the midpoint of 128–160 h
    ratios = {r["comparison"]: r for r in db.query("SELECT * FROM compute_speedups").iter_rows(named=True)}
    assert (ratios["prompt-based generation"]["paper"], ratios["pseudoword_dm"]["paper"]) == (30.0, 56.0)
    prompt_hours = [
        extrapolated["generate", m]["extrapolated_hours"]
        for m in ("simple_prompt", "simple_prompt_nows", "clip_prompts", "sariyildiz_prompts")
    ]
    retrieve_hours = extrapolated["retrieve", "retrieval"]["extrapolated_hours"]
    assert ratios["prompt-based generation"]["measured"] == pytest.approx(sum(prompt_hours) / 4 / retrieve_hours)
    # ⑨ generates its images as checkpoint candidates: one set of 390 a class at that stage's cost per image.
    one_set_9 = extrapolated["generate candidates", "pseudoword_dm"]["measured_seconds_per_image"] * 990 * 390 / 3600
    pseudoword = extrapolated["fine-tune", "pseudoword_dm"]["extrapolated_hours"] + one_set_9
    assert ratios["pseudoword_dm"]["measured"] == pytest.approx(pseudoword / retrieve_hours)

    # Scaling (Fig. 5B): smoke scales simple_prompt and retrieval at 100 % and 200 % of the target's size.
    scaling = db.query("SELECT * FROM scaling_scores ORDER BY method, ratio, replicate")
    assert scaling.height == 2 * 2 * profile.classifier.replicates
    targets = db.query("SELECT count(*) AS n FROM dataset_splits WHERE split = 'target'")["n"][0]
    for row in scaling.iter_rows(named=True):
        assert row["wanted_augmentation_images"] == row["ratio"] * targets  # ⌈r × count⌉ per class, whole here
        assert row["augmentation_images"] == row["wanted_augmentation_images"] and row["short_classes"] is None
        assert row["train_images"] == targets + row["augmentation_images"]
    curve = db.query("SELECT * FROM scaling_table ORDER BY method, ratio")
    assert curve["ratio"].to_list() == [0.0, 1.0, 2.0] * 2
    assert (
        curve.filter(pl.col("ratio") == 0)["top1_mean"].to_list() == [pytest.approx(results["real_p"]["top1_mean"])] * 2
    )

    reports = profile.home / "store" / "reports"
    for name in (
        "table1.png",
        "per_class_gains.png",
        "per_class_gain_distribution.png",
        "per_class_examples.png",
        "method_samples.png",
        "compute.png",
        "scaling.png",
    ):
        with Image.open(reports / name) as image:
            assert image.width > 300 and image.height > 200, name
    page = (reports / "report.html").read_text()
    for needed in (
        'src="table1.png"',
        'src="per_class_gains.png"',
        'src="per_class_gain_distribution.png"',
        'src="per_class_examples.png"',
        'src="method_samples.png"',
        'src="compute.png"',
        'src="scaling.png"',
        "<table>",
        "paper top-1",
        "Extrapolated to the paper",
    ):
        assert needed in page, needed
    instance = dg.DagsterInstance.get()
    metadata = instance.get_latest_materialization_event(dg.AssetKey("per_class_gains")).asset_materialization.metadata
    assert "data:image/png;base64," in metadata["per_class_gains"].value
    assert (
        "data:image/png;base64," in metadata["per_class_examples"].value
        and "pseudoword_dm" in metadata["fig5a_rows"].value
    )
    assert metadata["retrieval_beats_best_diffusion_on"].value.endswith("of 3 classes")


def test_a_ratio_the_pool_cannot_fill_names_its_short_classes(private_state, monkeypatch):
    """Scaling retrieval to 8× the target's size asks for more than smoke's pool holds per class
    (40 images, some failing the filters): those cells train with what there is and name each short
    class with its counts; generation is never short."""
    monkeypatch.setenv("AUGASSETS_SCALING_RATIOS", "1,8")
    profile = get_profile()
    cli.benchmark(profile, say=lambda *_: None)
    db = Warehouse(profile.tables)
    cells = {(r["method"], r["ratio"]): r for r in db.query("SELECT * FROM scaling_table").iter_rows(named=True)}
    assert set(cells) == {(m, r) for m in ("simple_prompt", "retrieval") for r in (0.0, 1.0, 8.0)}
    short = cells["retrieval", 8.0]
    assert short["short_classes"] and short["augmentation_images"] < short["wanted_augmentation_images"]
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
    assert named == short["short_classes"].count(" of ") >= 1
    assert cells["simple_prompt", 8.0]["short_classes"] is None and cells["retrieval", 1.0]["short_classes"] is None


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


@pytest.mark.parametrize(("judged", "passes"), [(0.55, True), (0.75, False)])
def test_judge_check_compares_with_ground_truth_precision(tmp_path, judged, passes):
    """The check weighs classes by their image counts: ground truth 0.6 overall (0.5 on 100 images, 0.8
    on 50); the judge passes within 0.1 of it and fails beyond."""
    warehouse = WarehouseResource(root=str(tmp_path / "tables"))
    warehouse.get().replace(
        "class_fidelity",
        pl.DataFrame(
            {
                "method": ["retrieval", "retrieval", "simple_prompt"],
                "wnid": ["a", "b", "a"],
                "fidelity": [judged, judged, 0.0],
                "target_recognizability": [0.1, 0.1, 0.1],
                "ground_truth_precision": [0.5, 0.8, None],
                "images": [100, 50, 30],
            }
        ),
    )
    result = build_stages(SMOKE).judge_agrees_with_ground_truth(warehouse=warehouse)
    assert result.passed is passes
    assert result.metadata["ground_truth_precision"].value == pytest.approx(0.6)
    assert result.metadata["difference"].value == pytest.approx(judged - 0.6)


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


def test_rerun_with_nothing_changed_launches_nothing(benchmark_run):
    profile, table = benchmark_run
    instance = dg.DagsterInstance.get()
    runs_before = len(instance.get_runs())
    lines = []
    again = cli.benchmark(profile, say=lines.append)
    assert again == table
    assert len(instance.get_runs()) == runs_before
    assert sum("up to date" in line for line in lines) == len(cli.benchmark_keys(defs))


def test_a_changed_code_version_reruns_that_asset_and_what_reads_it(private_state):
    """One notion of stale: the automation conditions name the asset whose code version changed, the
    CLI runs exactly it and then its downstream, and a rerun with nothing changed launches nothing."""
    import os

    changed = replace(
        private_state, duplicates=replace(private_state.duplicates, target_recall=0.9)
    )  # leak_threshold's version
    changed_defs = build_defs(changed, daemon=False)
    instance = dg.DagsterInstance.get()
    cursor = runner.load_cursor(Path(os.environ["DAGSTER_HOME"]))
    requested, _ = runner.evaluate(changed_defs, instance, cli.benchmark_keys(changed_defs), cursor)
    # Dagster requests the changed asset and, in the same run, what lies below it unpartitioned (the
    # results and the reports that read them); those also read duplicate_report, which the change makes
    # stale too, so the CLI runs leak_threshold alone first.
    assert requested == {
        dg.AssetKey(name): {None}
        for name in ("leak_threshold", "duplicate_summary", "results_table", "compute_report", "analysis_report")
    }
    assert [group.names for group in runner.plan_runs(changed_defs, requested)] == [["leak_threshold"]]

    before = {run.run_id for run in instance.get_runs()}
    materialize(changed, cli.benchmark_keys, say=lambda *_: None)
    launched = [run for run in instance.get_runs() if run.run_id not in before]
    assert [run.tags[ASSETS_TAG] for run in reversed(launched)] == [
        "leak_threshold",
        "duplicate_report",
        "duplicate_summary,results_table,compute_report,analysis_report",
    ]
    recall = Warehouse(changed.tables).query("SELECT recall FROM leak_threshold")["recall"][0]
    assert recall >= 0.9

    runs = len(instance.get_runs())
    lines = []
    materialize(changed, cli.benchmark_keys, say=lines.append)
    assert len(instance.get_runs()) == runs
    assert sum("up to date" in line for line in lines) == len(cli.benchmark_keys(changed_defs))


def test_a_command_killed_after_its_evaluation_leaves_the_requested_work_to_the_next(private_state, monkeypatch):
    """Dagster counts a requested partition as handled, and the cursor already holds the change that
    requested it: a command that dies before its runs finish must not turn that work into "up to
    date". The pending partitions are on disk before anything runs; the next command runs them."""
    import os

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


def _folder_profile(root):
    dataset = replace(IMAGE_FOLDER, default_root=str(root), root_env="AUGASSETS_TEST_UNSET_DIR")
    return replace(SMOKE, dataset=dataset, split=SplitSpec(train_fraction=0.2, seed=4))


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


def test_new_classes_sensor_registers_exactly_the_new_classes(image_folder):
    """The sensor adds the class folders the dataset gained as class partitions and asks for the catalog
    and splits run; a folder that is not a WordNet id is skipped; with nothing new it requests nothing."""
    sensor = build_defs(_folder_profile(image_folder)).resolve_sensor_def("new_classes")
    instance = dg.DagsterInstance.ephemeral()
    (image_folder / "train" / "not_a_wnid").mkdir()

    first = sensor(dg.build_sensor_context(instance=instance))
    assert [request.partition_keys for request in first.dynamic_partitions_requests] == [["n03595614", "n04489008"]]
    assert len(first.run_requests) == 1 and first.run_requests[0].run_key.startswith("new-classes-")
    instance.add_dynamic_partitions("class", ["n03595614", "n04489008"])

    nothing_new = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(nothing_new, dg.SkipReason)
    assert nothing_new.skip_message == "no new classes: 2 registered (1 class folders skipped, see the tick's log)"

    (image_folder / "train" / "n04021028").mkdir()  # pullover
    gained = sensor(dg.build_sensor_context(instance=instance))
    assert [request.partition_keys for request in gained.dynamic_partitions_requests] == [["n04021028"]]
    assert gained.run_requests[0].run_key != first.run_requests[0].run_key


def test_a_new_class_leaves_the_existing_class_partitions_alone(private_state):
    """Refreshing the catalog and splits (what the sensor requests when a class arrives) makes the
    cross-class assets stale, never the existing class × method partitions."""
    import os

    profile, instance = private_state, dg.DagsterInstance.get()
    cli_defs = build_defs(profile, daemon=False)
    cursor = runner.load_cursor(Path(os.environ["DAGSTER_HOME"]))
    # First the state as earlier tests of this module left it (the foundation tests rebuild the
    # foundation in the shared state): this evaluation's requests count as handled.
    _, cursor = runner.evaluate(cli_defs, instance, cli.benchmark_keys(cli_defs), cursor)
    prepare = runner.RunGroup((dg.AssetKey("class_catalog"), dg.AssetKey("dataset_splits")), None)
    runner.execute(cli_defs, instance, prepare, lambda *_: None)
    requested, _ = runner.evaluate(cli_defs, instance, cli.benchmark_keys(cli_defs), cursor)
    names = {key.to_user_string() for key in requested}
    assert not names & {"class_prompts", "augmentation_images", "duplicate_report"}
    # The mini world is drawn from the study's classes, so its pool (and all it feeds) follows the splits.
    assert {"web_pool", "excluded_classes", "augmented_datasets"} <= names


def test_excluded_classes_rewritten_with_the_same_rows_leaves_every_set_and_classifier_alone(private_state):
    """excluded_classes is rewritten whenever any method's images are (a method added to a home), and
    every augmented set reads it: only a change of its rows (its data version) makes them stale."""
    import os

    profile, instance = private_state, dg.DagsterInstance.get()
    cli_defs = build_defs(profile, daemon=False)
    keys = cli.benchmark_keys(cli_defs)
    cursor = runner.load_cursor(Path(os.environ["DAGSTER_HOME"]))
    _, cursor = runner.evaluate(cli_defs, instance, keys, cursor)
    excluded = runner.RunGroup((dg.AssetKey("excluded_classes"),), None)
    runner.execute(cli_defs, instance, excluded, lambda *_: None)
    requested, cursor = runner.evaluate(cli_defs, instance, keys, cursor)
    assert not {key.to_user_string() for key in requested} & {
        "augmented_datasets",
        "classifier_scores",
        "results_table",
    }, requested

    # One class's retrieval rows cut below the need: that class is now excluded, and every set follows.
    db = Warehouse(profile.tables)
    wnid = db.query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"][0]
    rows = db.query("SELECT * FROM augmentation_manifest WHERE method = 'retrieval' AND wnid = ?", [wnid])
    db.replace("augmentation_manifest", rows.head(1), where={"method": "retrieval", "wnid": wnid})
    runner.execute(cli_defs, instance, excluded, lambda *_: None)
    assert db.query("SELECT wnid FROM excluded_classes")["wnid"].to_list() == [wnid]
    requested, _ = runner.evaluate(cli_defs, instance, keys, cursor)
    graph = cli_defs.resolve_asset_graph()
    every_set = set(graph.get(dg.AssetKey("augmented_datasets")).partitions_def.get_partition_keys())
    assert {str(p) for p in requested.get(dg.AssetKey("augmented_datasets"), set())} == {str(p) for p in every_set}


def test_one_methods_new_images_retrain_that_methods_classifiers_only(private_state):
    """One method's images rebuilt (a partition deleted): its sets and classifiers retrain, even though
    they wait a round for excluded_classes, which the new images rewrite; the other methods' do not,
    since the excluded classes stay the same. Before, the waiting partitions were dropped and the
    method kept its old scores."""
    import shutil

    profile = replace(private_state, methods=("real_p", "simple_prompt", "retrieval"))
    instance = dg.DagsterInstance.get()
    # First whatever earlier tests of this module left stale (they rebuild the foundation in the shared state).
    materialize(profile, cli.benchmark_keys, say=lambda *_: None)
    wnid = Warehouse(profile.tables).query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"][0]
    shutil.rmtree(profile.home / "store" / "images" / "simple_prompt" / wnid)
    before = {run.run_id for run in instance.get_runs()}
    lines = []
    materialize(profile, cli.benchmark_keys, say=lines.append)
    launched = [run for run in reversed(instance.get_runs()) if run.run_id not in before]
    trained = [
        (run.tags.get(PARTITION_RANGE_START_TAG), run.tags.get(PARTITION_RANGE_END_TAG))
        for run in launched
        if "classifier_scores" in run.tags[ASSETS_TAG].split(",")
    ]
    assert trained == [("simple_prompt|0", "simple_prompt|1")], ("\n".join(lines), trained)
    assert any(
        run.tags[ASSETS_TAG] == "excluded_classes" or "excluded_classes" in run.tags[ASSETS_TAG].split(",")
        for run in launched
    )


def _dagster_cli(*args: str) -> list[str]:
    import sys

    return [str(Path(sys.executable).with_name(args[0])), *args[1:]]


def _wait_for(predicate, what: str, timeout: float, daemon=None):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if daemon is not None and daemon.poll() is not None:
            pytest.fail(f"dagster-daemon exited ({daemon.returncode}) while waiting for {what}")
        time.sleep(2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_daemon_backfills_at_the_cron_tick_and_resumes_after_a_restart(private_state, tmp_path):
    """A real `dagster-daemon` on smoke (cron: every minute). The duplicate reports are wiped, so they
    are missing; at the next cron tick a backfill requests them; the daemon is killed as soon as the backfill
    exists and restarted, and the backfill completes; the summary and the results table follow; later
    evaluations with nothing changed request nothing."""
    import os
    import signal
    import subprocess
    import time

    repo = Path(__file__).resolve().parents[1]
    # Two methods, not the whole smoke grid: what is tested (ticks, backfills, restarts) does not depend on them, and
    # one image method's partitions form one contiguous range, so the backfill is one run (each run is a new process).
    methods = ("real_p", "retrieval")
    env = {**os.environ, "AUGASSETS_PROFILE": "smoke", "AUGASSETS_METHODS": ",".join(methods)}
    cli.benchmark(
        replace(private_state, methods=methods), say=lambda *_: None
    )  # the subset's results table: nothing else is stale
    instance = dg.DagsterInstance.get()
    report, table = dg.AssetKey("duplicate_report"), dg.AssetKey("results_table")
    table_before = instance.get_latest_materialization_event(table).timestamp
    all_reports = {key for key in instance.get_materialized_partitions(report) if key.split("|")[0] in methods}
    instance.wipe_assets([report])  # (SQLite event logs cannot wipe single partitions)
    assert not instance.get_materialized_partitions(report)
    workspace = ["-w", str(repo / "workspace.yaml")]
    subprocess.run(
        _dagster_cli("dagster", "sensor", "start", "scheduled_backfill", *workspace),
        cwd=repo,
        env=env,
        check=True,
        capture_output=True,
    )

    def start_daemon(name: str):
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process below
        return subprocess.Popen(
            _dagster_cli("dagster-daemon", "run", *workspace),
            cwd=repo,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    daemons = [start_daemon("daemon1")]
    try:
        backfill = _wait_for(lambda: instance.get_backfills(), "the cron tick's backfill", 240, daemons[0])[0]
        os.kill(daemons[0].pid, signal.SIGKILL)  # the daemon only: the run it launched keeps running
        daemons[0].wait()
        daemons.append(start_daemon("daemon2"))
        done = _wait_for(
            lambda: (
                instance.get_backfill(backfill.backfill_id).status.value.startswith("COMPLETED")
                and instance.get_backfill(backfill.backfill_id)
            ),
            "the backfill to complete",
            400,
            daemons[1],
        )
        assert done.status.value == "COMPLETED_SUCCESS", (tmp_path / "daemon2.log").read_text()[-3000:]
        assert dg.AssetKey("duplicate_report") in done.asset_selection
        assert instance.get_materialized_partitions(report) == all_reports
        # Sensor ticks (and, as its runs queue behind the duckdb pool, usually a cron tick) came while it ran:
        # no second backfill.
        assert [b.backfill_id for b in instance.get_backfills()] == [backfill.backfill_id]
        backfill_runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": done.backfill_id}))
        assert {key.to_user_string() for run in backfill_runs for key in run.asset_selection} == {"duplicate_report"}
        for key in (dg.AssetKey("duplicate_summary"), table):  # downstream follows the update, before the next tick
            _wait_for(
                lambda k=key: instance.get_latest_materialization_event(k).timestamp > table_before,
                key.to_user_string(),
                180,
                daemons[1],
            )

        # A few evaluations later: nothing is stale, nothing is requested. (That the cron tick itself
        # requests nothing once everything is materialized is the headless rerun test's claim: the tick only
        # gates missing and code-changed partitions, and there are none.)
        runs, backfills = len(instance.get_runs()), len(instance.get_backfills())
        time.sleep(2 * private_state.automation.interval_s + 2)
        assert (len(instance.get_runs()), len(instance.get_backfills())) == (runs, backfills)
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(daemon.pid, signal.SIGKILL)


def _augassets_command(*args: str) -> list[str]:
    import sys

    return [str(Path(sys.executable).with_name("augassets")), *args]


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


def test_worker_chunks_keep_a_per_method_assets_methods_whole(benchmark_run):
    """Chunks for workers: a class × method asset is cut into about three chunks per worker, each a
    range Dagster reads as exactly its keys; checkpoint_selection, whose classifiers are per method
    (CHUNK_BY_TAG), gets one chunk per method, since two chunks of one method would each train all of
    its candidates' classifiers."""
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
            assert 4 <= len(two) <= 2 * runner.CHUNKS_PER_WORKER + len(profile.methods), two


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
