"""The paper's analyses over the study's tables (Dagster-free): Table 1 beside the paper's reported
numbers, per-class gains over the no-augmentation baseline (the paper's Fig. 5A) and what they
correlate with, and the scaling curves (Fig. 5B).

Accuracies are fractions (0–1) throughout; the markdown and the figures show percentages. An
interval needs at least two finished replicates: with fewer it is missing (null), never zero.

Why this module is long: every analysis shares the same interval arithmetic (Welch, standard errors)
and the same table shapes; one module keeps those formulas in one place.
"""

from __future__ import annotations

import csv
import math
from importlib import resources

import polars as pl

from .methods import get_method, method_order

BASELINE, UPPER = "real_p", "real_2p"  # the gap the paper reads each method against
DIFFUSION_FAMILIES = ("unconditioned", "prompt", "personalized")
PAPER_DATASETS = ("imagenet_10pct", "imagenet_full", "caltech256")


def paper_results(dataset: str) -> pl.DataFrame:
    """The paper's reported top-1 (fraction) and standard error per method for ``dataset`` (one of
    ``PAPER_DATASETS``), from the packaged ``data/paper_results.tsv``; ``paper_se`` is null where the
    paper gives none."""
    if dataset not in PAPER_DATASETS:
        raise ValueError(f"paper_reference {dataset!r}: the paper reports {', '.join(PAPER_DATASETS)}")
    text = resources.files("augassets.data").joinpath("paper_results.tsv").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    rows = [row for row in csv.DictReader(lines, delimiter="\t") if row["dataset"] == dataset]
    return pl.DataFrame(
        {
            "method": [row["method"] for row in rows],
            "paper_top1": [float(row["top1"]) / 100 for row in rows],
            "paper_se": [float(row["se"]) / 100 if row["se"] else None for row in rows],
        },
        schema={"method": pl.Utf8, "paper_top1": pl.Float64, "paper_se": pl.Float64},
    )


def paper_comparisons(dataset: str) -> list[dict]:
    """The further figures the paper reports for ``dataset`` beside its main tables (``data/paper_comparisons.tsv``):
    rows with ``kind`` (ablation or other_work), ``method``, ``setting``, ``top1`` and ``se`` (fractions; se None
    where not reported) and ``source``."""
    text = resources.files("augassets.data").joinpath("paper_comparisons.tsv").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return [
        {**row, "top1": float(row["top1"]) / 100, "se": float(row["se"]) / 100 if row["se"] else None}
        for row in csv.DictReader(lines, delimiter="\t")
        if row["dataset"] == dataset
    ]


def comparisons_note(dataset: str | None, methods: list[str], settings: dict[str, str]) -> str | None:
    """The paper's further figures that apply to a results table of ``methods``: an ablation of a method the
    table holds (the profile's own setting, from ``settings`` {name: value}, marked), and other published
    work the paper compares against on ``dataset``. None when none applies."""
    if dataset is None:
        return None
    rows = paper_comparisons(dataset)
    lines = []
    for method in dict.fromkeys(r["method"] for r in rows if r["kind"] == "ablation" and r["method"] in methods):
        ablation = [r for r in rows if r["kind"] == "ablation" and r["method"] == method]
        name = ablation[0]["setting"].split("=")[0]
        cells = []
        for r in ablation:
            value = r["setting"].split("=")[1]
            figure = f"{100 * r['top1']:.1f}" + (f" ± {100 * r['se']:.1f}" if r["se"] is not None else "")
            notes = [
                note
                for note, applies in (
                    ("derived", "derived" in r["source"]),
                    ("this profile", settings.get(name) == value),
                )
                if applies
            ]
            cells.append(f"{value} → {figure}" + (f" ({', '.join(notes)})" if notes else ""))
        lines.append(f"The paper's {get_method(method).paper_label} by {name} (top-1 %): " + "; ".join(cells) + ".")
    for r in rows:
        if r["kind"] == "other_work":
            lines.append(f"Reported beside the paper's rows: {r['source']}: {100 * r['top1']:.2f} %.")
    return "\n".join(lines) or None


def t_quantile(df: float) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def mean_interval(se: float | None, n: int) -> float | None:
    """Half-width of the 95 % interval of a mean of ``n`` runs with standard error ``se``."""
    if se is None or n < 2:
        return None
    return t_quantile(n - 1) * se


def difference_interval(se_a: float | None, n_a: int, se_b: float | None, n_b: int) -> float | None:
    """Half-width of the 95 % interval of a difference of two independent means (Welch: the runs of
    two methods are separate trainings on separate sets)."""
    if se_a is None or se_b is None or n_a < 2 or n_b < 2:
        return None
    var = se_a**2 + se_b**2
    if var == 0:
        return 0.0
    df = var**2 / (se_a**4 / (n_a - 1) + se_b**4 / (n_b - 1))
    return t_quantile(df) * math.sqrt(var)


def summarize_scores(scores: pl.DataFrame, paper_dataset: str | None = "imagenet_10pct") -> pl.DataFrame:
    """Table 1 from ``scores`` (one row per method × replicate with ``test_top1`` and
    ``train_images``): mean, standard error (sample standard deviation / √n, as the paper reports
    it) and 95 % interval per method; the gain over ``real_p`` with its 95 % interval and the share of
    the ``real_p`` → ``real_2p`` gap it closes; beside them the paper's figures for ``paper_dataset``
    (None: no paper columns' values)."""
    order = method_order()
    summary = (
        scores.group_by("method")
        .agg(
            pl.col("test_top1").mean().alias("top1_mean"),
            (pl.col("test_top1").std(ddof=1) / pl.len().sqrt()).alias("top1_se"),  # null for one run
            pl.len().alias("n_runs"),
            pl.col("train_images").mean().alias("train_images"),
        )
        .with_columns(pl.col("method").replace_strict(order, return_dtype=pl.Int64).alias("_order"))
        .sort("_order")
        .drop("_order")
    )
    paper = (
        paper_results(paper_dataset)
        if paper_dataset
        else pl.DataFrame(schema={"method": pl.Utf8, "paper_top1": pl.Float64, "paper_se": pl.Float64})
    )
    rows = {r["method"]: r for r in summary.iter_rows(named=True)}
    papers = {r["method"]: r for r in paper.iter_rows(named=True)}
    base, upper = rows.get(BASELINE), rows.get(UPPER)
    paper_base, paper_upper = papers.get(BASELINE), papers.get(UPPER)
    out = []
    for method, row in rows.items():
        mine = papers.get(method, {})
        gain = row["top1_mean"] - base["top1_mean"] if base else None
        gap = upper["top1_mean"] - base["top1_mean"] if base and upper else None
        paper_gain = mine["paper_top1"] - paper_base["paper_top1"] if mine and paper_base else None
        paper_gap = paper_upper["paper_top1"] - paper_base["paper_top1"] if paper_base and paper_upper else None
        out.append(
            {
                "method": method,
                "paper_label": get_method(method).paper_label,
                "top1_mean": row["top1_mean"],
                "top1_se": row["top1_se"],
                "top1_ci95": mean_interval(row["top1_se"], row["n_runs"]),
                "n_runs": row["n_runs"],
                "train_images": row["train_images"],
                "gain": gain,
                "gain_ci95": None
                if method == BASELINE or not base
                else difference_interval(row["top1_se"], row["n_runs"], base["top1_se"], base["n_runs"]),
                "gap_share": gain / gap if gain is not None and gap else None,
                "paper_top1": mine.get("paper_top1"),
                "paper_se": mine.get("paper_se"),
                "paper_gain": paper_gain,
                "paper_gap_share": paper_gain / paper_gap if paper_gain is not None and paper_gap else None,
            }
        )
    return pl.DataFrame(out, schema=TABLE1_SCHEMA)


TABLE1_SCHEMA = {
    "method": pl.Utf8,
    "paper_label": pl.Utf8,
    "top1_mean": pl.Float64,
    "top1_se": pl.Float64,
    "top1_ci95": pl.Float64,
    "n_runs": pl.Int64,
    "train_images": pl.Float64,
    "gain": pl.Float64,
    "gain_ci95": pl.Float64,
    "gap_share": pl.Float64,
    "paper_top1": pl.Float64,
    "paper_se": pl.Float64,
    "paper_gain": pl.Float64,
    "paper_gap_share": pl.Float64,
}


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _signed(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:+.{digits}f}"


def markdown_table(summary: pl.DataFrame, paper_dataset: str = "imagenet_10pct") -> str:
    """Table 1 side by side: ours (mean ± s.e., 95 % interval, gain over real_p with its 95 %
    interval, share of the real_p → real_2p gap) and the paper's (``paper_dataset``). "–": missing
    (fewer than two runs, no baseline, or not reported by the paper)."""
    lines = [
        f"| method | paper label | top-1 (%) ± s.e. | 95 % CI | gain vs real_p (pp) | share of gap | runs | "
        f"train images "
        f"| paper top-1 ({paper_dataset}) | paper gain (pp) | paper share of gap |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for row in summary.iter_rows(named=True):
        interval = (
            "–"
            if row["top1_ci95"] is None
            else f"{_pct(row['top1_mean'] - row['top1_ci95'])}–{_pct(row['top1_mean'] + row['top1_ci95'])}"
        )
        gain = _signed(row["gain"]) + ("" if row["gain_ci95"] is None else f" ± {_pct(row['gain_ci95'])}")
        paper = (
            "–"
            if row["paper_top1"] is None
            else _pct(row["paper_top1"], 1) + ("" if row["paper_se"] is None else f" ± {_pct(row['paper_se'], 1)}")
        )
        lines.append(
            f"| {row['method']} | {row['paper_label']} | {_pct(row['top1_mean'])} ± {_pct(row['top1_se'])} | "
            f"{interval} | {gain} "
            f"| {_pct(row['gap_share'], 0)}{'' if row['gap_share'] is None else ' %'} | {row['n_runs']} | "
            f"{row['train_images']:.0f} "
            f"| {paper} | {_signed(row['paper_gain'], 1)} | "
            f"{_pct(row['paper_gap_share'], 0)}{'' if row['paper_gap_share'] is None else ' %'} |"
        )
    return "\n".join(lines)


def per_class_gains(per_class: pl.DataFrame) -> pl.DataFrame:
    """Per method (other than real_p) and class: the class's test accuracy mean over replicates,
    its gain over real_p's mean on that class, and the gain's standard error (null with fewer than two
    runs on either side); no rows without real_p. ``per_class``: method, replicate, wnid, name, test_top1."""
    stats = per_class.group_by("method", "wnid", "name").agg(
        pl.col("test_top1").mean().alias("top1_mean"),
        pl.col("test_top1").var(ddof=1).alias("_var"),
        pl.len().alias("n_runs"),
    )
    base = stats.filter(pl.col("method") == BASELINE).select(
        "wnid",
        pl.col("top1_mean").alias("_base_mean"),
        pl.col("_var").alias("_base_var"),
        pl.col("n_runs").alias("_base_n"),
    )
    # Without real_p's scores there is nothing to gain over: the join leaves no rows.
    order = method_order()
    return (
        stats.filter(pl.col("method") != BASELINE)
        .join(base, on="wnid")
        .with_columns(
            (pl.col("top1_mean") - pl.col("_base_mean")).alias("gain"),
            pl.when((pl.col("n_runs") >= 2) & (pl.col("_base_n") >= 2))
            .then((pl.col("_var") / pl.col("n_runs") + pl.col("_base_var") / pl.col("_base_n")).sqrt())
            .alias("gain_se"),
            pl.col("method").replace_strict(order, return_dtype=pl.Int64).alias("_order"),
        )
        .sort("_order", "wnid")
        .select(
            "method",
            "wnid",
            "name",
            "top1_mean",
            pl.col("_base_mean").alias("real_p_top1"),
            "gain",
            "gain_se",
            "n_runs",
        )
    )


PAPER_FIG5A_DIFFUSION = "pseudoword_dm"  # the paper's Fig. 5A sets ⑨ beside retrieval


def fig5a_methods(summary: pl.DataFrame) -> list[tuple[str, str]]:
    """The rows the paper's Fig. 5A shows, as (method, why): ⑨ where it ran, else the best diffusion row
    (named as the stand-in), and retrieval where it ran."""
    ran = set(summary["method"])
    chosen = []
    if PAPER_FIG5A_DIFFUSION in ran:
        chosen.append((PAPER_FIG5A_DIFFUSION, "the paper's diffusion row in Fig. 5A"))
    elif (best := best_diffusion_method(summary)) is not None:
        chosen.append(
            (best, f"the best diffusion row here, standing in for {PAPER_FIG5A_DIFFUSION}, which did not run")
        )
    if "retrieval" in ran:
        chosen.append(("retrieval", "the paper's retrieval row in Fig. 5A"))
    return chosen


def extreme_classes(gains: pl.DataFrame, methods: list[str], count: int = 2) -> pl.DataFrame:
    """Per method, its ``count`` worst and ``count`` best classes by gain over real_p (the paper's Fig. 5A
    examples): method, extreme (worst or best), rank within it, wnid, name, gain."""
    rows = []
    for method in methods:
        mine = gains.filter(pl.col("method") == method).sort("gain", "wnid")
        for end, part in (("worst", mine.head(count)), ("best", mine.reverse().head(count))):
            for rank, row in enumerate(part.iter_rows(named=True)):
                rows.append(
                    {
                        "method": method,
                        "extreme": end,
                        "rank": rank,
                        "wnid": row["wnid"],
                        "name": row["name"],
                        "gain": row["gain"],
                    }
                )
    return pl.DataFrame(
        rows,
        schema={
            "method": pl.Utf8,
            "extreme": pl.Utf8,
            "rank": pl.Int64,
            "wnid": pl.Utf8,
            "name": pl.Utf8,
            "gain": pl.Float64,
        },
    )


def best_diffusion_method(summary: pl.DataFrame) -> str | None:
    """The diffusion-based method (Boomerang, prompts, personalized) with the highest mean top-1."""
    diffusion = summary.filter(
        pl.col("method").map_elements(lambda k: get_method(k).family in DIFFUSION_FAMILIES, return_dtype=pl.Boolean)
    )
    return None if diffusion.is_empty() else diffusion.sort("top1_mean", descending=True)["method"][0]


def headline(summary: pl.DataFrame, retrieval: str = "retrieval") -> str | None:
    """The study's answer in one line: retrieval's top-1 minus the best diffusion row's, with the 95 %
    interval of the difference (Welch) and the paper's difference between the same two rows beside it;
    None unless both rows ran."""
    diffusion = best_diffusion_method(summary)
    rows = {r["method"]: r for r in summary.iter_rows(named=True)}
    if diffusion is None or retrieval not in rows:
        return None
    mine, theirs = rows[retrieval], rows[diffusion]
    half = difference_interval(mine["top1_se"], mine["n_runs"], theirs["top1_se"], theirs["n_runs"])
    ours = _signed(mine["top1_mean"] - theirs["top1_mean"]) + ("" if half is None else f" ± {_pct(half)}")
    paper = "not reported"
    if mine["paper_top1"] is not None and theirs["paper_top1"] is not None:
        difference = _signed(mine["paper_top1"] - theirs["paper_top1"], 1)
        paper = f"{difference} pp ({_pct(mine['paper_top1'], 1)} vs {_pct(theirs['paper_top1'], 1)})"
    verdict = "undecided: the interval contains zero"
    if half is not None and abs(mine["top1_mean"] - theirs["top1_mean"]) > half:
        verdict = "retrieval helps more" if mine["top1_mean"] > theirs["top1_mean"] else f"{diffusion} helps more"
    return (
        f"**Retrieval − best diffusion row ({diffusion}): {ours} pp** (95 % interval, Welch; {verdict}). "
        f"The paper, the same two rows: {paper}."
    )


COMPARISON_SCHEMA = {
    "method_a": pl.Utf8,
    "method_b": pl.Utf8,
    "difference": pl.Float64,  # mean top-1 of a minus b (fraction)
    "ci95": pl.Float64,  # half-width of its 95 % interval (Welch)
    "p_value": pl.Float64,  # Welch's two-sided t-test
    "p_holm": pl.Float64,  # Holm's step-down adjustment over every pair of the table
    "verdict": pl.Utf8,
}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m − i + 1), made monotone
    and capped at 1; the family-wise error stays at the level each adjusted p-value is compared to."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def pairwise_comparisons(scores: pl.DataFrame, alpha: float = 0.05) -> pl.DataFrame:
    """Every method against every other (rows in the registry's order, a listed before b): the
    difference of mean top-1 with its 95 % interval (Welch), Welch's two-sided p-value and the p-value
    adjusted by Holm's method over all pairs, and the verdict at ``alpha`` after the adjustment — so a
    reader need not compare error bars by eye. A pair with a method of fewer than two runs has no test
    and stays out of the adjustment."""
    from scipy import stats

    order = method_order()
    runs = {method: part["test_top1"].drop_nulls().to_numpy() for (method,), part in scores.group_by("method")}
    methods = sorted(runs, key=lambda m: order.get(m, len(order)))
    rows = []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            x, y = runs[a], runs[b]
            row = {"method_a": a, "method_b": b, "difference": float(x.mean() - y.mean())}
            if len(x) > 1 and len(y) > 1:
                se = [float(v.std(ddof=1)) / math.sqrt(len(v)) for v in (x, y)]
                row["ci95"] = difference_interval(se[0], len(x), se[1], len(y))
                equal = se[0] == se[1] == 0
                row["p_value"] = 1.0 if equal else float(stats.ttest_ind(x, y, equal_var=False).pvalue)
            rows.append(row)
    tested = [r for r in rows if r.get("p_value") is not None]
    for row, adjusted in zip(tested, holm([r["p_value"] for r in tested])):
        row["p_holm"] = adjusted
    for row in rows:
        if row.get("p_holm") is None:
            row["verdict"] = "untested: fewer than two runs"
        elif row["p_holm"] < alpha:
            row["verdict"] = f"{row['method_a'] if row['difference'] > 0 else row['method_b']} better"
        else:
            row["verdict"] = "undecided"
    return pl.DataFrame(rows, schema=COMPARISON_SCHEMA)


def retrieval_versus_diffusion(gains: pl.DataFrame, diffusion: str, retrieval: str = "retrieval") -> pl.DataFrame:
    """Per class: retrieval's and ``diffusion``'s gain and their difference (positive: retrieval
    better), sorted from retrieval's largest advantage to diffusion's."""

    def pick(method, name):
        return gains.filter(pl.col("method") == method).select("wnid", "name", pl.col("gain").alias(name))

    return (
        pick(retrieval, "retrieval_gain")
        .join(pick(diffusion, "diffusion_gain").drop("name"), on="wnid")
        .with_columns(
            (pl.col("retrieval_gain") - pl.col("diffusion_gain")).alias("retrieval_minus_diffusion"),
            pl.lit(diffusion).alias("diffusion_method"),
        )
        .sort("retrieval_minus_diffusion", descending=True)
    )


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson's r, or None with fewer than three pairs or no spread."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3:
        return None
    mx, my = (sum(p[i] for p in pairs) / len(pairs) for i in (0, 1))
    sxy = sum((a - mx) * (b - my) for a, b in pairs)
    sxx, syy = sum((a - mx) ** 2 for a, _ in pairs), sum((b - my) ** 2 for _, b in pairs)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def gain_correlations(
    gains: pl.DataFrame, fidelity: pl.DataFrame | None, similarity: pl.DataFrame | None
) -> pl.DataFrame:
    """Per method: Pearson's r over classes between the class's gain and (a) the class fidelity of
    the method's images for that class (``fidelity``: method, wnid, fidelity), (b) the mean CLIP
    similarity of the retrieved images for that class to its query (``similarity``: method, wnid,
    similarity; retrieval methods only). Null where a figure is missing or there are < 3 classes."""
    rows = []
    for method in gains["method"].unique(maintain_order=True):
        part = gains.filter(pl.col("method") == method)
        row = {"method": method, "classes": part.height, "r_gain_fidelity": None, "r_gain_retrieval_similarity": None}
        if fidelity is not None:
            joined = part.join(fidelity.filter(pl.col("method") == method).select("wnid", "fidelity"), on="wnid")
            row["r_gain_fidelity"] = pearson(joined["gain"].to_list(), joined["fidelity"].to_list())
        if similarity is not None:
            joined = part.join(similarity.filter(pl.col("method") == method).select("wnid", "similarity"), on="wnid")
            if joined.height:
                row["r_gain_retrieval_similarity"] = pearson(joined["gain"].to_list(), joined["similarity"].to_list())
        rows.append(row)
    return pl.DataFrame(
        rows,
        schema={
            "method": pl.Utf8,
            "classes": pl.Int64,
            "r_gain_fidelity": pl.Float64,
            "r_gain_retrieval_similarity": pl.Float64,
        },
    )


def scaling_summary(scores: pl.DataFrame, baseline: pl.DataFrame | None) -> pl.DataFrame:
    """Per method × ratio: top-1 mean, standard error and 95 % interval (missing with one run), the
    augmentation images used and wanted, and the short classes; ``baseline`` (real_p's classifier
    scores) adds the ratio-0 point every curve starts from. Where short classes left the cell
    (``ScalingSpec.short_classes = "exclude"``), ``top1_mean`` is over the other classes and
    ``top1_worst`` / ``top1_best`` bound it over every class (the paper's ▲ and ▼); elsewhere both
    equal ``top1_mean``."""

    def spread(top1: pl.Series) -> dict:
        top1 = top1.drop_nulls()
        n = top1.len()
        se = float(top1.std(ddof=1)) / math.sqrt(n) if n > 1 else None
        mean = float(top1.mean()) if n else None
        return {"top1_mean": mean, "top1_se": se, "top1_ci95": mean_interval(se, n), "n_runs": n}

    def bound(part: pl.DataFrame, column: str) -> float | None:
        if column not in part.columns or part[column].null_count() == part.height:
            return None if part["test_top1"].null_count() == part.height else float(part["test_top1"].mean())
        return float(part[column].mean())

    rows = []
    for (method, ratio), part in scores.group_by("method", "ratio", maintain_order=True):
        excluded = int(part["excluded_short_classes"].max() or 0) if "excluded_short_classes" in part.columns else 0
        rows.append(
            {
                "method": method,
                "ratio": ratio,
                **spread(part["test_top1"]),
                "augmentation_images": float(part["augmentation_images"].mean() or 0.0),
                "wanted_augmentation_images": int(part["wanted_augmentation_images"].max()),
                "short_classes": part["short_classes"][0],
                "excluded_short_classes": excluded,
                "top1_worst": bound(part, "test_top1_worst"),
                "top1_best": bound(part, "test_top1_best"),
            }
        )
    if baseline is not None and baseline.height:
        start = spread(baseline["test_top1"])
        for method in scores["method"].unique(maintain_order=True):
            rows.append(
                {
                    "method": method,
                    "ratio": 0.0,
                    **start,
                    "augmentation_images": 0.0,
                    "wanted_augmentation_images": 0,
                    "short_classes": None,
                    "excluded_short_classes": 0,
                    "top1_worst": start["top1_mean"],
                    "top1_best": start["top1_mean"],
                }
            )
    return pl.DataFrame(
        rows,
        schema={
            "method": pl.Utf8,
            "ratio": pl.Float64,
            "top1_mean": pl.Float64,
            "top1_se": pl.Float64,
            "top1_ci95": pl.Float64,
            "n_runs": pl.Int64,
            "augmentation_images": pl.Float64,
            "wanted_augmentation_images": pl.Int64,
            "short_classes": pl.Utf8,
            "excluded_short_classes": pl.Int64,
            "top1_worst": pl.Float64,
            "top1_best": pl.Float64,
        },
    ).sort("method", "ratio")
