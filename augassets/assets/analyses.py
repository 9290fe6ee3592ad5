"""Stage: the paper's analyses — Table 1 beside the paper's (``results_table``), per-class gains
(``per_class_gains``, Fig. 5A), a sample grid of every method's images (``method_samples``), compute
per method and stage with its extrapolation to the paper's scale (``compute_report``, §4.4) and the
report a person opens without the UI (``analysis_report``: ``reports/report.html`` with the figures).

Every figure is a PNG in the store's ``reports/`` folder and inline in the asset's metadata. A figure
that fails to draw does not fail the asset's data: its reason is logged and shown in the metadata.

Why this module is long: the report assets are thin (the numbers are ``core.analysis``, the pictures
``core.figures``), but each composes its tables, figures and metadata for the UI; they read the same
tables and share those helpers.
"""

import time
from collections.abc import Callable
from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core import analysis
from ..core.files import write_bytes_atomic
from ..core.markdown import excluded_wnids, frame_markdown, read_excluded, results_report
from ..core.methods import get_method, runnable_methods
from ..integrity import outputs
from ..lineage import partition_links
from ..profiles import Profile
from ..resources import ImageStoreResource, WarehouseResource
from ..versions import code_version

GROUP = "reports"
SAMPLE_CLASSES = 10  # columns of the sample grid


def save_figure(context, image_store: ImageStoreResource, name: str, draw: Callable) -> dict:
    """Draw a figure into ``reports/<name>`` and return its metadata entries (the PNG inline and its
    path); a figure that fails to draw is logged and reported in the metadata, not raised."""
    import io

    from ..core.images import png_data_uri_markdown

    try:
        image = draw()
    except Exception as error:  # a figure is an extra: the asset's data stands without it
        context.log.warning(f"figure {name} was not drawn: {type(error).__name__}: {error}")
        return {f"figure_{name.removesuffix('.png')}": f"not drawn: {type(error).__name__}: {error}"}
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path = image_store.path("reports", name)
    write_bytes_atomic(buffer.getvalue(), path)
    image_store.publish("reports", name)
    stem = name.removesuffix(".png")
    return {
        stem: dg.MetadataValue.md(png_data_uri_markdown(image, stem)),
        f"{stem}_file": dg.MetadataValue.path(image_store.url("reports", name)),
    }


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's assets and checks for ``profile``; ``up``: the earlier stages' definitions by name."""
    paper = profile.paper_reference
    report_settings = profile.report_settings
    augmenting = hasattr(up, "augmentation_images")

    @dg.asset(
        metadata=outputs(tables=("results_table", "method_comparisons")),
        group_name=GROUP,
        code_version=code_version("4", profile.methods, profile.classifier.replicates, paper, report_settings),
        # The report also shows the excluded classes, class fidelity and near-duplicates where the profile has them.
        deps=[up.classifier_scores]
        + [
            getattr(up, name)
            for name in ("excluded_classes", "class_fidelity", "domain_match", "duplicate_summary")
            if hasattr(up, name)
        ],
        kinds={"parquet", "csv"},
        description="The paper's Table 1 side by side: top-1 test accuracy per method, mean ± standard error and 95 % "
        "interval over the classifier replicates, the gain over real_p with its 95 % interval (Welch) and the "
        "share of the "
        f"real_p → real_2p gap it closes; beside them the paper's reported figures ({paper}, packaged as "
        "data/paper_results.tsv). A DuckDB table, a CSV file, a bar chart (reports/table1.png) and the markdown "
        "report. And which differences are real: every method against every other (table method_comparisons: the "
        "difference with its 95 % interval, Welch's p-value and Holm's adjustment over all pairs; "
        "reports/comparisons.png).",
    )
    def results_table(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        from ..core.figures import comparisons_figure, table1_figure

        db = warehouse.get()
        methods = [m.key for m in runnable_methods(profile.methods)]
        if not db.has_table("classifier_scores"):
            raise RuntimeError("no classifier scores yet: materialize classifier_scores first")
        scores = db.query("SELECT * FROM classifier_scores").filter(
            pl.col("method").is_in(methods) & (pl.col("replicate") < profile.classifier.replicates)
        )
        summary = analysis.summarize_scores(scores, paper)
        db.replace("results_table", summary)
        comparisons = analysis.pairwise_comparisons(scores)
        db.replace("method_comparisons", comparisons)
        excluded = read_excluded(db)
        csv_path = image_store.path("reports", "results_table.csv")
        write_bytes_atomic(summary.write_csv().encode(), csv_path)
        image_store.publish("reports", csv_path.name)
        table = results_report(db, paper, report_settings)  # the main command prints the same report
        context.log.info("results table:\n" + table)
        incomplete = [r["method"] for r in summary.iter_rows(named=True) if r["n_runs"] < profile.classifier.replicates]
        return dg.MaterializeResult(
            metadata={
                "methods": summary.height,
                "runs": int(summary["n_runs"].sum()),
                "incomplete_methods": ", ".join(incomplete) or "none",
                "excluded_classes": 0 if excluded is None else excluded.height,
                "paper_reference": paper,
                "results": dg.MetadataValue.md(table),
                "derived_from": dg.MetadataValue.md(
                    "Each method's classifier runs (classifier_scores partitions):\n\n"
                    + "\n".join(
                        f"- {m}: "
                        + partition_links(
                            "classifier_scores", [f"{m}|{r}" for r in range(profile.classifier.replicates)]
                        )
                        for m in summary["method"]
                    )
                ),
                "csv": dg.MetadataValue.path(image_store.url("reports", csv_path.name)),
                **save_figure(context, image_store, "table1.png", lambda: table1_figure(summary, paper)),
                "comparisons": dg.MetadataValue.md(frame_markdown(comparisons, "{:.4f}")),
                "significant_pairs": int(comparisons["verdict"].str.ends_with(" better").sum()),
                **save_figure(
                    context,
                    image_store,
                    "comparisons.png",
                    lambda: comparisons_figure(comparisons, summary["method"].to_list()),
                ),
            }
        )

    assets = {"results_table": results_table}

    @dg.asset(
        metadata=outputs(tables=("per_class_gains", "gain_correlations")),
        group_name=GROUP,
        code_version=code_version("2", profile.methods, profile.classifier.replicates),
        deps=[up.classifier_scores] + ([up.class_fidelity, up.augmentation_images] if augmenting else []),
        kinds={"parquet"},
        description="Per-class gains (the paper's Fig. 5A): per method and class, test accuracy mean over the "
        "replicates "
        "minus real_p's on that class, with its standard error; the classes where retrieval beats the best diffusion "
        "method and where it loses; Pearson's r over classes between a method's gain and its class fidelity, and, for "
        "retrieval, the mean CLIP similarity of the retrieved images. As the paper draws Fig. 5A: the distributions of "
        "per-class gains of ⑨ and retrieval (the best diffusion row, named, where ⑨ did not run) and images of "
        "each one's "
        "worst and best classes (table per_class_extremes). Figures: reports/per_class_gains.png, "
        "per_class_gain_distribution.png, per_class_examples.png.",
    )
    def per_class_gains(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        from ..core.figures import per_class_gain_figure

        db = warehouse.get()
        methods = [m.key for m in runnable_methods(profile.methods)]
        per_class = db.query("SELECT method, replicate, wnid, name, test_top1 FROM per_class_scores").filter(
            pl.col("method").is_in(methods) & (pl.col("replicate") < profile.classifier.replicates)
        )
        if analysis.BASELINE not in set(per_class["method"]):
            context.log.warning(
                f"per-class gains need {analysis.BASELINE}'s classifiers (methods here: {', '.join(methods)}): "
                "the tables stay empty; add it to the methods (AUGASSETS_METHODS)"
            )
        gains = analysis.per_class_gains(per_class)
        fidelity = similarity = None
        if db.has_table("class_fidelity"):
            table = db.query("SELECT * FROM class_fidelity")
            column = "fidelity" if "fidelity" in table.columns else "target_recognizability"
            fidelity = table.select("method", "wnid", pl.col(column).alias("fidelity"))
        if db.has_table("augmentation_manifest"):
            similarity = (
                db.query("SELECT method, wnid, similarity FROM augmentation_manifest WHERE similarity IS NOT NULL")
                .group_by("method", "wnid")
                .agg(pl.col("similarity").mean())
            )
        correlations = analysis.gain_correlations(gains, fidelity, similarity)
        db.replace("per_class_gains", gains)
        db.replace("gain_correlations", correlations)
        metadata = {
            "classes": gains["wnid"].n_unique(),
            "methods": gains["method"].n_unique(),
            "classes_gaining": dg.MetadataValue.md(
                frame_markdown(
                    gains.group_by("method", maintain_order=True).agg(
                        (pl.col("gain") > 0).sum().alias("classes_gaining"),
                        pl.len().alias("classes"),
                        pl.col("gain").mean().alias("mean_gain"),
                    )
                )
            ),
            "correlations": dg.MetadataValue.md(frame_markdown(correlations, "{:.3f}")),
        }
        summary = analysis.summarize_scores(
            db.query("SELECT * FROM classifier_scores").filter(pl.col("method").is_in(methods)), None
        )
        diffusion = analysis.best_diffusion_method(summary)
        if diffusion and "retrieval" in methods:
            versus = analysis.retrieval_versus_diffusion(gains, diffusion)
            db.replace("retrieval_vs_diffusion", versus)
            wins = versus.filter(pl.col("retrieval_minus_diffusion") > 0)
            losses = versus.filter(pl.col("retrieval_minus_diffusion") < 0)
            context.log.info(
                f"per-class gains: retrieval beats {diffusion} on {wins.height} of {versus.height} classes, "
                f"loses on {losses.height}"
            )
            metadata["best_diffusion_method"] = diffusion
            metadata["retrieval_beats_best_diffusion_on"] = f"{wins.height} of {versus.height} classes"
            metadata["retrieval_vs_diffusion"] = dg.MetadataValue.md(frame_markdown(versus, "{:+.4f}"))
        metadata.update(save_figure(context, image_store, "per_class_gains.png", lambda: per_class_gain_figure(gains)))
        metadata.update(fig5a(context, db, image_store, gains, analysis.fig5a_methods(summary)))
        return dg.MaterializeResult(metadata=metadata)

    def fig5a(context, db, image_store: ImageStoreResource, gains: pl.DataFrame, shown: list[tuple[str, str]]) -> dict:
        """The paper's Fig. 5A: the gain distributions of the shown rows, and images of each one's worst and
        best classes."""
        from ..core.figures import gain_distribution_figure, sample_figure

        if not shown or gains.is_empty():
            return {}
        extremes = analysis.extreme_classes(gains, [method for method, _ in shown])
        db.replace("per_class_extremes", extremes)
        metadata = {
            "fig5a_rows": dg.MetadataValue.md("\n".join(f"- `{method}`: {why}" for method, why in shown)),
            "worst_and_best_classes": dg.MetadataValue.md(frame_markdown(extremes, "{:+.4f}")),
            **save_figure(
                context, image_store, "per_class_gain_distribution.png", lambda: gain_distribution_figure(gains, shown)
            ),
        }
        if not db.has_table("augmentation_manifest"):
            return metadata
        rows, examples = [], 4
        for row in extremes.filter(pl.col("rank") == 0).iter_rows(named=True):
            target = db.query(
                "SELECT path FROM dataset_splits WHERE split = 'target' AND wnid = ? ORDER BY item LIMIT 1",
                [row["wnid"]],
            )["path"].to_list()
            images = db.query(
                "SELECT path FROM augmentation_manifest WHERE method = ? AND wnid = ? ORDER BY rank LIMIT ?",
                [row["method"], row["wnid"], examples],
            )["path"].to_list()
            image_store.ensure(target + images, context.log.info)
            label = f"{row['method']}, {row['extreme']}: {row['name'].split(',')[0]} ({100 * row['gain']:+.1f} pp)"
            rows.append((label, (target + [None])[:1] + (images + [None] * examples)[:examples]))
        columns = ["target"] + [f"image {i + 1}" for i in range(examples)]
        metadata.update(
            save_figure(context, image_store, "per_class_examples.png", lambda: sample_figure(rows, columns))
        )
        return metadata

    assets["per_class_gains"] = per_class_gains

    if augmenting:

        @dg.asset(
            group_name=GROUP,
            code_version=code_version("1", profile.methods),
            deps=[up.augmentation_images, up.dataset_splits],
            kinds={"png"},
            description="The picture before any number: for up to ten classes, a real target image and the "
            "first image of "
            "every method's augmentation set (retrieved images included), one row per method. "
            "reports/method_samples.png.",
        )
        def method_samples(
            context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
        ) -> dg.MaterializeResult:
            from ..core.figures import sample_figure

            db = warehouse.get()
            catalog = db.query("SELECT wnid, name FROM class_catalog ORDER BY label").head(SAMPLE_CLASSES)
            wnids = catalog["wnid"].to_list()
            target = db.query("SELECT wnid, path FROM dataset_splits WHERE split = 'target' ORDER BY wnid, item")
            manifest = db.query("SELECT method, wnid, path FROM augmentation_manifest WHERE rank = 0")
            first = {(r["method"], r["wnid"]): r["path"] for r in manifest.iter_rows(named=True)}
            firsts = {w: target.filter(pl.col("wnid") == w)["path"].head(1).to_list() for w in wnids}
            rows = [("real target", [firsts[w][0] if firsts[w] else None for w in wnids])]
            for method in runnable_methods(profile.methods):
                if method.family != "baseline":
                    rows.append((method.key, [first.get((method.key, w)) for w in wnids]))
            image_store.ensure([p for _, paths in rows for p in paths if p], context.log.info)
            shown = sum(p is not None for _, paths in rows for p in paths)
            return dg.MaterializeResult(
                metadata={
                    "rows": len(rows),
                    "classes": len(wnids),
                    "images": shown,
                    **save_figure(
                        context,
                        image_store,
                        "method_samples.png",
                        lambda: sample_figure(rows, catalog["name"].to_list()),
                    ),
                }
            )

        assets["method_samples"] = method_samples

    def own_scale(db):
        """The profile's own dataset as the compute stages see it (None before its splits exist)."""
        from ..core.compute import Scale
        from .prompts import images_per_class, needed_per_class

        if not db.has_table("dataset_splits"):
            return None
        excluded = list(excluded_wnids(db))
        target = db.query("SELECT wnid FROM dataset_splits WHERE split = 'target'").filter(
            ~pl.col("wnid").is_in(excluded)
        )
        generated = images_per_class(db, "simple_prompt", profile)  # the generation rule, whichever method
        return Scale(target["wnid"].n_unique(), target.height, generated, needed_per_class(db, profile))

    @dg.asset(
        metadata=outputs(tables=("compute_report", "compute_extrapolation", "compute_speedups", "cost_of_accuracy")),
        group_name=GROUP,
        code_version=code_version("3"),
        # After every step that records its compute: all are upstream of the results, or of the scaling scores.
        deps=[results_table] + ([up.scaling_scores] if hasattr(up, "scaling_scores") else []),
        kinds={"parquet"},
        description="Compute accounting (the paper's §4.4): the wall seconds, images and images/s that every training, "
        "fine-tuning, generation, embedding and retrieval step recorded (compute_log), summed per method and stage; "
        "the measured seconds per image times the images each stage handles at the paper's scale (ImageNet-10 %: 990 "
        "classes, 126,861 target images, 390 generated or 130 retrieved per class) as extrapolated hours on the "
        "measuring device, beside the paper's hours (reported, or derived from what it reports); and retrieval's "
        "speed-up over generation, the paper's 30× and 56× beside ours. Figure: reports/compute.png. And the cost of "
        "a point of accuracy (table cost_of_accuracy, reports/cost.png): each method's gain over real_p against the "
        "measured seconds that made its extra images, classifier training apart, the paper's hours beside.",
    )
    def compute_report(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        from ..core.compute import COMPUTE_SCHEMA, compute_summary, cost_of_accuracy, extrapolate, speedups
        from ..core.figures import compute_figure, cost_figure

        db = warehouse.get()
        # Steps materialized before compute accounting existed have no rows until they run again.
        log = (
            db.query("SELECT * FROM compute_log")
            if db.has_table("compute_log")
            else pl.DataFrame(schema=COMPUTE_SCHEMA)
        )
        if log.is_empty():
            context.log.warning(
                "compute_log is empty: no step has recorded its compute yet (steps record it when they run)"
            )
        summary = compute_summary(log)
        epochs = {}
        if db.has_table("classifier_scores"):
            for row in db.query("SELECT method, avg(epochs_run) AS e FROM classifier_scores GROUP BY method").iter_rows(
                named=True
            ):
                epochs["train classifier", row["method"]] = row["e"]
        if db.has_table("checkpoint_scores"):
            for row in db.query("SELECT method, avg(epochs_run) AS e FROM checkpoint_scores GROUP BY method").iter_rows(
                named=True
            ):
                epochs["select checkpoint", row["method"]] = row["e"]
        if db.has_table("finetune_history"):
            runs = db.query(
                "SELECT method, wnid, cluster, count(*) AS e FROM finetune_history GROUP BY method, wnid, cluster"
            )
            for row in runs.group_by("method").agg(pl.col("e").mean()).iter_rows(named=True):
                epochs["fine-tune", row["method"]] = row["e"]
        if db.has_table("candidate_manifest"):
            sets = db.query(
                "SELECT method, wnid, count(DISTINCT epochs) AS sets FROM candidate_manifest GROUP BY method, wnid"
            )
            for row in sets.group_by("method").agg(pl.col("sets").mean()).iter_rows(named=True):
                epochs["generate candidates", row["method"]] = row["sets"]
        scaled = extrapolate(summary, epochs, own_scale(db))
        ratios = speedups(scaled, [m for m in profile.methods if get_method(m).family == "prompt"])
        db.replace("compute_report", summary)
        db.replace("compute_extrapolation", scaled)
        db.replace("compute_speedups", ratios)
        costs = cost_of_accuracy(db.query("SELECT * FROM results_table"), log)
        db.replace("cost_of_accuracy", costs)
        total = float(log["seconds"].sum())
        context.log.info(
            f"compute: {total:.0f} s measured over {log.height} partitions; per stage: "
            + ", ".join(
                f"{r['stage']} {r['seconds']:.0f} s"
                for r in summary.group_by("stage").agg(pl.col("seconds").sum()).iter_rows(named=True)
            )
        )
        return dg.MaterializeResult(
            metadata={
                "measured_seconds": round(total, 1),
                "partitions_measured": log.height,
                "devices": ", ".join(sorted(log["device"].unique())),
                "measured": dg.MetadataValue.md(frame_markdown(summary, "{:.3f}")),
                "extrapolated_to_paper_scale": dg.MetadataValue.md(
                    "Measured seconds per image × images at the paper's scale, in hours on the measuring device "
                    "(extrapolated); "
                    "paper_hours: the paper's §4.4 figure, reported or derived (paper_hours_kind).\n\n"
                    + frame_markdown(scaled, "{:.4g}")
                ),
                "retrieval_speedup": dg.MetadataValue.md(
                    "Retrieval's speed-up over generation at the paper's scale: the paper's §4.4 ratios and ours.\n\n"
                    + frame_markdown(ratios, "{:.1f}")
                ),
                **save_figure(context, image_store, "compute.png", lambda: compute_figure(summary)),
                "cost_of_accuracy": dg.MetadataValue.md(
                    "Per method: its gain over real_p and the measured seconds that made its extra images "
                    "(classifier training apart), seconds per percentage point, and the paper's hours for the "
                    "same stages per point of its gain.\n\n" + frame_markdown(costs, "{:.4g}")
                ),
                **save_figure(context, image_store, "cost.png", lambda: cost_figure(costs)),
            }
        )

    assets["compute_report"] = compute_report

    if hasattr(up, "scaling_scores"):

        @dg.asset(
            metadata=outputs(tables=("scaling_table",)),
            group_name=GROUP,
            code_version=code_version("1", profile.scaling),
            deps=[up.scaling_scores, up.classifier_scores],
            kinds={"parquet"},
            description="The scaling analysis (paper Fig. 5B): top-1 mean ± standard error and 95 % interval "
            "per method and "
            "augmentation ratio, real_p as ratio 0, and the classes that could not fill a ratio. Figure: "
            "reports/scaling.png.",
        )
        def scaling_table(
            context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
        ) -> dg.MaterializeResult:
            from ..core.figures import scaling_figure

            db = warehouse.get()
            ratios = list(profile.scaling.ratios)
            scores = db.query("SELECT * FROM scaling_scores").filter(pl.col("ratio").is_in(ratios))
            baseline = (
                db.query(
                    "SELECT test_top1 FROM classifier_scores WHERE method = 'real_p' AND replicate < ?",
                    [profile.classifier.replicates],
                )
                if "real_p" in profile.methods
                else None
            )
            summary = analysis.scaling_summary(scores, baseline)
            db.replace("scaling_table", summary)
            short = summary.filter(pl.col("short_classes").is_not_null())
            return dg.MaterializeResult(
                metadata={
                    "cells": summary.height,
                    "short_cells": short.height,
                    "table": dg.MetadataValue.md(frame_markdown(summary)),
                    **save_figure(context, image_store, "scaling.png", lambda: scaling_figure(summary)),
                }
            )

        assets["scaling_table"] = scaling_table

    report_deps = (
        [results_table, per_class_gains, compute_report]
        + ([assets["method_samples"]] if augmenting else [])
        + ([assets["scaling_table"]] if "scaling_table" in assets else [])
    )

    @dg.asset(
        group_name=GROUP,
        code_version=code_version("2", paper, report_settings),
        deps=report_deps,
        kinds={"html"},
        description="reports/report.html: the results table beside the paper's, the notes (excluded classes, class "
        "fidelity, domain match, near-duplicates), per-class gains and every figure, in one page to open "
        "without the UI.",
    )
    def analysis_report(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        db = warehouse.get()
        figures = {
            name: image_store.path("reports", f"{name}.png").is_file()
            for name in (
                "table1",
                "comparisons",
                "per_class_gains",
                "per_class_gain_distribution",
                "per_class_examples",
                "method_samples",
                "compute",
                "cost",
                "scaling",
            )
        }

        def image(name, alt):
            if figures[name]:
                return f"![{alt}]({name}.png)"
            return f"(figure {name}.png was not drawn: see its asset's log)"

        sections = [
            ("Results", results_report(db, paper, report_settings) + "\n\n" + image("table1", "Table 1 as bars"))
        ]
        if db.has_table("method_comparisons"):
            sections.append(
                (
                    "Which differences are real",
                    image("comparisons", "every method against every other")
                    + "\n\nEvery pair: the difference of mean top-1 (fraction) with its 95 % interval (Welch), "
                    "Welch's p-value and Holm's adjustment over all pairs:\n\n"
                    + frame_markdown(db.query("SELECT * FROM method_comparisons"), "{:.4f}"),
                )
            )
        if augmenting:
            sections.insert(0, ("What each method adds", image("method_samples", "one image per method and class")))
        gains = [image("per_class_gains", "per-class gains")]
        if db.has_table("per_class_extremes"):  # the paper's Fig. 5A: distributions and the extreme classes' images
            gains += [
                image("per_class_gain_distribution", "distributions of per-class gains"),
                image("per_class_examples", "images of each row's worst and best class"),
                frame_markdown(
                    db.query("SELECT * FROM per_class_extremes ORDER BY method, extreme DESC, rank"), "{:+.4f}"
                ),
            ]
        if db.has_table("gain_correlations"):
            gains.append(
                "Pearson's r over classes between a method's gain and its class fidelity / retrieval similarity:\n\n"
                + frame_markdown(db.query("SELECT * FROM gain_correlations"), "{:.3f}")
            )
        versus = db.query("SELECT * FROM retrieval_vs_diffusion") if db.has_table("retrieval_vs_diffusion") else None
        if versus is not None and versus.height:
            gains.append(
                f"Retrieval against the best diffusion method ({versus['diffusion_method'][0]}), per class "
                f"(gains in fractions):\n\n" + frame_markdown(versus.drop("diffusion_method"), "{:+.4f}")
            )
        sections.append(("Per-class gains over real_p", "\n\n".join(gains)))
        if "scaling_table" in assets and db.has_table("scaling_table"):
            sections.append(
                (
                    "Scaling with more augmentation images",
                    image("scaling", "top-1 against the augmentation ratio")
                    + "\n\n"
                    + frame_markdown(db.query("SELECT * FROM scaling_table ORDER BY method, ratio")),
                )
            )
        if db.has_table("compute_extrapolation"):
            sections.append(
                (
                    "Compute",
                    image("compute", "compute per method and stage")
                    + "\n\n"
                    + "Measured on this machine:\n\n"
                    + frame_markdown(db.query("SELECT * FROM compute_report"), "{:.3f}")
                    + "\n\nExtrapolated to the paper's scale from the measured seconds per image (hours on the "
                    "measuring device), "
                    "beside the paper's reported hours (§4.4):\n\n"
                    + frame_markdown(db.query("SELECT * FROM compute_extrapolation"), "{:.4g}"),
                )
            )
        if db.has_table("cost_of_accuracy"):
            sections.append(
                (
                    "The cost of a point of accuracy",
                    image("cost", "gain over real_p against the compute that made it")
                    + "\n\n"
                    + frame_markdown(db.query("SELECT * FROM cost_of_accuracy"), "{:.4g}"),
                )
            )
        from ..core.html_report import report_html

        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        text = report_html(f"augassets — profile {profile.name}", f"{profile.description} Written {stamp}.", sections)
        path = image_store.path("reports", "report.html")
        write_bytes_atomic(text.encode(), path)
        image_store.publish("reports", "report.html")
        context.log.info(f"report: {image_store.url('reports', 'report.html')}")
        return dg.MaterializeResult(
            metadata={
                "report": dg.MetadataValue.path(image_store.url("reports", "report.html")),
                "figures": ", ".join(name for name, drawn in figures.items() if drawn) or "none",
                "bytes": len(text.encode()),
            }
        )

    assets["analysis_report"] = analysis_report
    return assets
