"""The results table: top-1 accuracy mean ± standard error over the classifier replicates per method."""

from __future__ import annotations

import polars as pl

from .methods import METHOD_KEYS, get_method


def summarize_scores(scores: pl.DataFrame) -> pl.DataFrame:
    """``scores`` has one row per (method, replicate) with ``test_top1``; the standard error is the
    sample standard deviation over replicates divided by sqrt(n), as the paper reports it."""
    order = {key: i for i, key in enumerate(METHOD_KEYS)}
    summary = (
        scores.group_by("method")
        .agg(
            pl.col("test_top1").mean().alias("top1_mean"),
            (pl.col("test_top1").std(ddof=1) / pl.len().sqrt()).fill_null(0.0).alias("top1_se"),
            pl.len().alias("n_runs"),
            pl.col("train_images").mean().alias("train_images"),
        )
        .with_columns(
            pl.col("method").replace_strict(order, return_dtype=pl.Int64).alias("_order"),
            pl.col("method").map_elements(lambda k: get_method(k).paper_label, return_dtype=pl.Utf8).alias("paper_label"),
        )
        .sort("_order")
        .drop("_order")
    )
    return summary.select("method", "paper_label", "top1_mean", "top1_se", "n_runs", "train_images")


def markdown_table(summary: pl.DataFrame) -> str:
    lines = [
        "| method | paper | top-1 (%) mean ± s.e. | runs | train images |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for row in summary.iter_rows(named=True):
        lines.append(
            f"| {row['method']} | {row['paper_label']} | {100 * row['top1_mean']:.2f} ± {100 * row['top1_se']:.2f} "
            f"| {row['n_runs']} | {row['train_images']:.0f} |"
        )
    return "\n".join(lines)


def read_excluded(db) -> pl.DataFrame | None:
    """The excluded classes (wnid, name), or None before retrieval's exclusion rule has run."""
    return db.query("SELECT wnid, name FROM excluded_classes ORDER BY wnid") if db.has_table("excluded_classes") else None


def excluded_wnids(db) -> set[str]:
    """Classes retrieval could not fill; empty before retrieval has run (baseline-only profiles)."""
    excluded = read_excluded(db)
    return set() if excluded is None else set(excluded["wnid"])


def fidelity_note(per_class: pl.DataFrame) -> str:
    """Per method: class fidelity by the unbiased judge, target-domain recognizability and, for
    retrieval in the mini world, its precision by ground truth (image-weighted over classes)."""
    names = {"fidelity": "class fidelity (judge)", "target_recognizability": "target-domain recognizability",
             "ground_truth_precision": "precision by ground truth"}
    columns = [c for c in names if c in per_class.columns]
    lines = []
    for method in sorted(per_class["method"].unique()):
        rows = per_class.filter(pl.col("method") == method)
        parts = [f"{names[c]} {(rows[c] * rows['images']).sum() / rows['images'].sum():.3f}" for c in columns if rows[c].null_count() == 0]
        lines.append(f"- {method}: " + ", ".join(parts))
    return "Share of augmentation images recognized as their class:\n" + "\n".join(lines)


def domain_note(table: pl.DataFrame) -> str:
    """Per method: the domain-match figure (a linear classifier's held-out accuracy at telling target-domain
    images from the method's by CLIP image embedding; 0.5: indistinguishable)."""
    lines = [f"- {r['method']}: {r['separability']:.3f} ({r['images_per_side']:,} images per side)" for r in table.iter_rows(named=True)]
    return "Domain match (accuracy of telling the method's images from the target's; 0.5: indistinguishable, 1.0: always told apart):\n" + "\n".join(lines)


def duplicates_note(detector: dict, summary: pl.DataFrame) -> str:
    """pHash near-duplicate counts per method and reference split, with the threshold and where it came from."""
    how = "the paper's threshold" if detector["source"] == "paper" else (
        f"chosen on the planted duplicates: recall {detector['recall']:.2f}, precision {detector['precision']:.2f}")
    return f"pHash near-duplicates (Hamming < {detector['threshold']}, {how}) of augmentation images:\n" + "\n".join(
        f"- {r['method']}: {r['matched_reference_images']:,} of {r['reference_images']:,} {r['split']} images match "
        f"{r['leaking_augmentation_images']:,} of {r['augmentation_images']:,} augmentation images"
        for r in summary.sort("method", "split").iter_rows(named=True)
    )


def results_report(db) -> str:
    """The main command's report, from the tables: the results table, excluded classes, class fidelity
    and near-duplicates (each part once its table exists)."""
    parts = [markdown_table(db.query("SELECT * FROM results_table"))]
    excluded = read_excluded(db)
    if excluded is not None:
        parts.append(excluded_note(excluded))
    if db.has_table("class_fidelity"):
        parts.append(fidelity_note(db.query("SELECT * FROM class_fidelity")))
    if db.has_table("domain_match"):
        parts.append(domain_note(db.query("SELECT * FROM domain_match")))
    if db.has_table("duplicate_summary") and db.has_table("leak_threshold"):
        parts.append(duplicates_note(db.query("SELECT * FROM leak_threshold").row(0, named=True), db.query("SELECT * FROM duplicate_summary")))
    return "\n\n".join(parts)


def excluded_note(excluded: pl.DataFrame) -> str:
    """The results table's footnote on classes left out of every method (retrieval could not fill them)."""
    if excluded.is_empty():
        return "Excluded classes: none (retrieval filled every class)."
    names = ", ".join(f"{r['wnid']} ({r['name']})" for r in excluded.iter_rows(named=True))
    return f"Excluded classes ({excluded.height}, retrieval could not fill them; left out of every method): {names}"


def frame_markdown(frame: pl.DataFrame, float_format: str = "{:.4f}") -> str:
    """Any small frame as a markdown table (for Dagster metadata)."""

    def cell(value) -> str:
        text = float_format.format(value) if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *body])
