"""Stage: per class and method, the prompts — one per image a prompt method generates, retrieval's KNN
query — and how many images a class gets (the target's largest class times the ratio; paper §3)."""

import math
from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.methods import IMG2IMG, PLUGIN, RETRIEVAL, get_method
from ..core.prompts import ClassNames, build_prompts, fit_to_tokenizer, simple_prompt, simple_prompt_nows
from ..integrity import outputs
from ..partitions import (
    class_method_partitions,
    image_method_keys,
    method_and_class,
)
from ..profiles import Profile
from ..resources import (
    ClipEncoderResource,
    WarehouseResource,
)
from ..versions import code_version

GROUP = "images"
PROMPT_SCHEMA = {
    "method": pl.Utf8,
    "wnid": pl.Utf8,
    "prompt_index": pl.Int64,
    "family": pl.Utf8,
    "prompt": pl.Utf8,
    "truncated": pl.Boolean,
    "source_image": pl.Utf8,  # Boomerang: the target image this output starts from
}


def needed_per_class(db, profile: Profile) -> int:
    """n: the target's largest per-class count times the profile's augmentation ratio."""
    largest = db.query(
        "SELECT max(n) AS n FROM (SELECT count(*) AS n FROM dataset_splits WHERE split = 'target' GROUP BY wnid)"
    )["n"][0]
    return math.ceil(profile.retrieval.ratio * largest)


def images_per_class(db, method: str, profile: Profile) -> int:
    """Retrieval (and a plugin that does not resample): n. Generation: ``GenerationSpec.per_class``
    where set, else ``factor`` × the target's largest per-class count."""
    n = needed_per_class(db, profile)
    if not get_method(method).resample:
        return n
    return profile.generation.per_class or math.ceil(profile.generation.factor * n / profile.retrieval.ratio)


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """The prompts of every class × image method (before the personalized stage, which reads them)."""
    if not image_method_keys(profile):  # baselines only: no images, nothing to exclude
        return {}

    @dg.asset(
        metadata=outputs(rows="class_prompts"),
        group_name=GROUP,
        code_version=code_version("1", profile.generation, profile.dataset, profile.split),
        partitions_def=class_method_partitions(profile),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[up.class_catalog, up.clip_model, up.dataset_splits],
        kinds={"parquet"},
        description="The prompts of a class for a method, one per image to generate (3× the target's largest class): "
        "simple, no-whitespace simple, CLIP templates (sampled with replacement) or Sariyildiz families (equal counts, "
        "random Places365 backgrounds); cut to the text encoder's 77 tokens. For retrieval, the KNN query: the "
        "no-whitespace simple prompt.",
    )
    def class_prompts(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, clip_encoder: ClipEncoderResource
    ) -> dg.MaterializeResult:
        from ..core.generation import image_seed

        db = warehouse.get()
        catalog = {
            r["wnid"]: r
            for r in db.query("SELECT wnid, name, hypernym, definition FROM class_catalog").iter_rows(named=True)
        }
        tokenizer = clip_encoder.tokenizer()
        total, truncated, examples = 0, 0, []
        for key in context.partition_keys:
            method, wnid = method_and_class(key)
            if wnid not in catalog:
                raise ValueError(f"class partition {wnid!r} is not in the class catalog: rematerialize class_catalog")
            row = catalog[wnid]
            builder = get_method(method).builder
            if builder == RETRIEVAL:
                pairs = [("simple_nows", simple_prompt_nows(row["name"]))]
            elif builder == PLUGIN:  # a plugin makes its own; it is handed the simple prompt (ClassInfo.prompt)
                pairs = [("simple", simple_prompt(row["name"]))]
            else:
                seed = image_seed(profile.generation.seed, method, wnid, -1)
                pairs = build_prompts(
                    method,
                    ClassNames(row["name"], row["hypernym"], row["definition"]),
                    images_per_class(db, method, profile),
                    seed,
                )
            sources = [None] * len(pairs)
            if builder == IMG2IMG:
                targets = db.query(
                    "SELECT path FROM dataset_splits WHERE split = 'target' AND wnid = ? ORDER BY item", [wnid]
                )["path"].to_list()
                if not targets:
                    raise ValueError(
                        f"class {wnid} has no target images for Boomerang to start from (check dataset_splits)"
                    )
                sources = [targets[i % len(targets)] for i in range(len(pairs))]
            fitted = [
                (family, *fit_to_tokenizer(prompt, tokenizer, allow_empty=builder == IMG2IMG))
                for family, prompt in pairs
            ]
            frame = pl.DataFrame(
                [
                    {
                        "method": method,
                        "wnid": wnid,
                        "prompt_index": i,
                        "family": f,
                        "prompt": p,
                        "truncated": cut,
                        "source_image": src,
                    }
                    for i, ((f, p, cut), src) in enumerate(zip(fitted, sources))
                ],
                schema=PROMPT_SCHEMA,
            )
            db.replace("class_prompts", frame, where={"method": method, "wnid": wnid})
            total += frame.height
            truncated += int(frame["truncated"].sum())
            examples.append(f"- `{method}` `{wnid}`: {fitted[0][1] or '(no prompt)'}")
        return dg.MaterializeResult(
            metadata={
                "partitions": len(context.partition_keys),
                "prompts": total,
                "truncated_to_77_tokens": truncated,
                "examples": dg.MetadataValue.md("\n".join(examples[:12])),
            }
        )

    return {"class_prompts": class_prompts}
