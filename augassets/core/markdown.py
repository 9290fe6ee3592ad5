"""The main command's report: the results table (Table 1 beside the paper's, core/analysis.py) and the
notes on excluded classes, class fidelity, domain match and near-duplicates."""

from __future__ import annotations

import polars as pl

from .analysis import comparisons_note, headline, markdown_table


def read_excluded(db) -> pl.DataFrame | None:
    """The excluded classes (wnid, name), or None before retrieval's exclusion rule has run."""
    return (
        db.query("SELECT wnid, name FROM excluded_classes ORDER BY wnid") if db.has_table("excluded_classes") else None
    )


def excluded_wnids(db) -> set[str]:
    """Classes retrieval could not fill; empty before retrieval has run (baseline-only profiles)."""
    excluded = read_excluded(db)
    return set() if excluded is None else set(excluded["wnid"])


def fidelity_note(per_class: pl.DataFrame) -> str:
    """Per method: class fidelity by the unbiased judge, target-domain recognizability and, for
    retrieval in the mini world, its precision by ground truth (image-weighted over classes)."""
    names = {
        "fidelity": "class fidelity (judge)",
        "target_recognizability": "target-domain recognizability",
        "ground_truth_precision": "precision by ground truth",
    }
    columns = [c for c in names if c in per_class.columns]
    lines = []
    for method in sorted(per_class["method"].unique()):
        rows = per_class.filter(pl.col("method") == method)
        parts = [
            f"{names[c]} {(rows[c] * rows['images']).sum() / rows['images'].sum():.3f}"
            for c in columns
            if rows[c].null_count() == 0
        ]
        lines.append(f"- {method}: " + ", ".join(parts))
    return "Share of augmentation images recognized as their class:\n" + "\n".join(lines)


def domain_note(table: pl.DataFrame) -> str:
    """Per method: the domain-match figure (a linear classifier's held-out accuracy at telling target-domain
    images from the method's by CLIP image embedding; 0.5: indistinguishable)."""
    lines = [
        f"- {r['method']}: {r['separability']:.3f} ({r['images_per_side']:,} images per side)"
        for r in table.iter_rows(named=True)
    ]
    return (
        "Domain match (accuracy of telling the method's images from the target's; 0.5: indistinguishable, 1.0: "
        "always told apart):\n" + "\n".join(lines)
    )


def duplicates_note(detector: dict, summary: pl.DataFrame) -> str:
    """pHash near-duplicate counts per method and reference split, with the threshold and where it came from."""
    how = (
        "the paper's threshold"
        if detector["source"] == "paper"
        else (
            f"chosen on the planted duplicates: recall {detector['recall']:.2f}, precision {detector['precision']:.2f}"
        )
    )
    return f"pHash near-duplicates (Hamming < {detector['threshold']}, {how}) of augmentation images:\n" + "\n".join(
        f"- {r['method']}: {r['matched_reference_images']:,} of {r['reference_images']:,} {r['split']} images match "
        f"{r['leaking_augmentation_images']:,} of {r['augmentation_images']:,} augmentation images"
        for r in summary.sort("method", "split").iter_rows(named=True)
    )


def results_report(db, paper_dataset: str = "imagenet_10pct", settings: dict[str, str] | None = None) -> str:
    """The main command's report, from the tables: the results table beside the paper's
    ``paper_dataset`` figures (and the paper's further figures that apply: ablations at the profile's
    ``settings``, other published work), excluded classes, class fidelity and near-duplicates (each part
    once its table exists)."""
    summary = db.query("SELECT * FROM results_table")
    parts = [markdown_table(summary, paper_dataset)]
    answer = headline(summary)
    if answer:
        parts.append(answer)
    comparisons = comparisons_note(paper_dataset, summary["method"].to_list(), settings or {})
    if comparisons:
        parts.append(comparisons)
    excluded = read_excluded(db)
    if excluded is not None:
        parts.append(excluded_note(excluded))
    if db.has_table("class_fidelity"):
        parts.append(fidelity_note(db.query("SELECT * FROM class_fidelity")))
    if db.has_table("domain_match"):
        parts.append(domain_note(db.query("SELECT * FROM domain_match")))
    if db.has_table("duplicate_summary") and db.has_table("leak_threshold"):
        parts.append(
            duplicates_note(
                db.query("SELECT * FROM leak_threshold").row(0, named=True), db.query("SELECT * FROM duplicate_summary")
            )
        )
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
