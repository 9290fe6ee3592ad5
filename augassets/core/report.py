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
