"""Stage: the results table — the paper's Table 1 for the methods that have run."""


from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.files import write_bytes_atomic
from ..core.methods import runnable_methods
from ..core.report import read_excluded, results_report, summarize_scores
from ..integrity import outputs
from ..profiles import Profile
from ..resources import ImageStoreResource, WarehouseResource
from ..versions import code_version


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's assets and checks for ``profile``; ``up``: the earlier stages' definitions by name."""

    @dg.asset(
        metadata=outputs(tables=("results_table",)),
        group_name="reports",
        code_version=code_version("1", profile.methods, profile.classifier.replicates),
        # The report also shows the excluded classes, class fidelity and near-duplicates where the profile has them.
        deps=[up.classifier_scores] + [getattr(up, name) for name in ("excluded_classes", "class_fidelity", "domain_match", "duplicate_summary") if hasattr(up, name)],
        kinds={"parquet", "csv"},
        description="Top-1 test accuracy mean ± standard error over the classifier replicates, per method "
        "(the paper's Table 1), as a DuckDB table, a CSV file and a markdown report (with the excluded classes, and "
        "class fidelity, domain match and near-duplicate counts where those tables exist).",
    )
    def results_table(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        db = warehouse.get()
        methods = [m.key for m in runnable_methods(profile.methods)]
        if not db.has_table("classifier_scores"):
            raise RuntimeError("no classifier scores yet: materialize classifier_scores first")
        scores = db.query("SELECT * FROM classifier_scores").filter(
            pl.col("method").is_in(methods) & (pl.col("replicate") < profile.classifier.replicates)
        )
        summary = summarize_scores(scores)
        db.replace("results_table", summary)
        excluded = read_excluded(db)
        csv_path = image_store.path("reports", "results_table.csv")
        write_bytes_atomic(summary.write_csv().encode(), csv_path)
        image_store.publish("reports", csv_path.name)
        table = results_report(db)  # the main command prints the same report
        context.log.info("results table:\n" + table)
        incomplete = [r["method"] for r in summary.iter_rows(named=True) if r["n_runs"] < profile.classifier.replicates]
        return dg.MaterializeResult(
            metadata={
                "methods": summary.height,
                "runs": int(summary["n_runs"].sum()),
                "incomplete_methods": ", ".join(incomplete) or "none",
                "excluded_classes": 0 if excluded is None else excluded.height,
                "results": dg.MetadataValue.md(table),
                "csv": dg.MetadataValue.path(image_store.url("reports", csv_path.name)),
            }
        )

    return {"results_table": results_table}
