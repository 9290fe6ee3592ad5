"""Stage: the class catalog (WordNet names of every class) and the class partitions."""

from types import SimpleNamespace

import dagster as dg

from ..core.catalog import SkippedClass, build_catalog
from ..core.markdown import frame_markdown
from ..integrity import outputs
from ..partitions import CLASS_PARTITIONS_NAME
from ..profiles import Profile
from ..resources import WarehouseResource
from ..versions import code_version


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's assets and checks for ``profile``; ``up``: the earlier stages' definitions by name."""

    @dg.asset(
        metadata=outputs(tables=("class_catalog",)),
        group_name="catalog",
        code_version=code_version("1", profile.dataset, profile.max_classes),
        kinds={"parquet", "python"},
        description="One row per class: wnid, label, WordNet lemmas, name (lemmas joined by ', '), name without "
        "whitespace, first hypernym and definition. Fills the dynamic `class` partitions with the wnids. Class folders "
        "whose names are not WordNet noun ids are skipped and listed.",
    )
    def class_catalog(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        skipped: list[SkippedClass] = []
        catalog = build_catalog(profile.dataset, profile.max_classes, skipped=skipped)
        for item in skipped:
            context.log.warning(f"class folder {item.folder!r} skipped: {item.reason}")
        warehouse.get().replace("class_catalog", catalog)
        known = set(context.instance.get_dynamic_partitions(CLASS_PARTITIONS_NAME))
        new_keys = [wnid for wnid in catalog["wnid"].to_list() if wnid not in known]
        if new_keys:
            context.instance.add_dynamic_partitions(CLASS_PARTITIONS_NAME, new_keys)
        context.log.info(f"catalog: {catalog.height} classes ({len(new_keys)} new class partitions)")
        preview = catalog.select("wnid", "label", "name", "name_nows", "hypernym").head(20)
        return dg.MaterializeResult(
            metadata={
                "profile": profile.name,
                "classes": catalog.height,
                "new_class_partitions": len(new_keys),
                "skipped_class_folders": len(skipped),
                "skipped_class_folder_reasons": dg.MetadataValue.json({item.folder: item.reason for item in skipped}),
                "preview": dg.MetadataValue.md(frame_markdown(preview)),
            }
        )

    return {"class_catalog": class_catalog}
