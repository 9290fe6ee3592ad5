"""Stage: per class and method, the prompts and the augmentation images (retrieved, generated, or — for
the personalized methods — the chosen checkpoint candidate's), class fidelity, and the classes
retrieval cannot fill — excluded from every method (paper §3)."""

import hashlib
import math
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.compute import Meter, timed
from ..core.compute import record as record_compute
from ..core.files import atomic_folder, file_url_path, load_checkpoint, with_file_facts, write_parquet_atomic
from ..core.images import image_grid, load_rgb, png_data_uri_markdown
from ..core.knn import KnnError
from ..core.methods import FINETUNE_BUILDERS, IMG2IMG, RETRIEVAL, TXT2IMG, get_method, keys_with_builder
from ..core.prompts import ClassNames, build_prompts, fit_to_tokenizer, simple_prompt_nows
from ..core.report import excluded_wnids, frame_markdown
from ..core.retrieval import FilterColumns, local_image_problem, retrieve
from ..integrity import outputs
from ..partitions import (
    class_method_partitions,
    class_partitions,
    image_method_keys,
    method_and_class,
    same_class_of,
    scaling_method_keys,
)
from ..profiles import Profile
from ..resources import (
    ClipEncoderResource,
    ComputeResource,
    DiffusionBackendResource,
    ImageStoreResource,
    KnnIndexResource,
    WarehouseResource,
)
from ..scale import ON_GPU
from ..versions import code_version
from .partial import fail_partially

GROUP = "images"
SAMPLED_HERE = frozenset(
    {TXT2IMG, IMG2IMG}
)  # builders whose images this stage samples (fine-tuned ones: candidate_images)
JUDGE_TOLERANCE = 0.1  # the judge's fidelity on retrieved images may differ this much from their ground-truth precision
MANIFEST_SCHEMA = {
    "method": pl.Utf8,
    "wnid": pl.Utf8,
    "rank": pl.Int64,
    "path": pl.Utf8,
    "prompt": pl.Utf8,
    "family": pl.Utf8,
    "seed": pl.Int64,
    "attempts": pl.Int64,
    "pool_id": pl.Int64,
    "caption": pl.Utf8,
    "similarity": pl.Float64,
    "aesthetic": pl.Float64,
    "candidate": pl.Utf8,
    "checkpoint": pl.Utf8,  # fine-tuned methods: the chosen checkpoint candidate (label) and file(s)
}
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
    """Retrieval: n. Generation: ``GenerationSpec.factor`` × the target's largest per-class count."""
    n = needed_per_class(db, profile)
    return (
        n
        if get_method(method).builder == RETRIEVAL
        else math.ceil(profile.generation.factor * n / profile.retrieval.ratio)
    )


def build_class_prompts(profile: Profile, up: SimpleNamespace) -> dict:
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


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's assets and checks for ``profile``; ``up``: the earlier stages' definitions by name."""
    if not image_method_keys(profile):  # baselines only: no images, nothing to exclude
        return {}
    class_prompts = up.class_prompts
    finetuned = keys_with_builder(FINETUNE_BUILDERS, profile.methods)
    # A fine-tuned method's images are the chosen checkpoint's (checkpoint_selection, same class); other methods
    # read none.
    selection_deps = (
        [dg.AssetDep(up.checkpoint_selection, partition_mapping=same_class_of(finetuned))] if finetuned else []
    )

    @dg.asset(
        metadata=outputs(paths={"augmentation_manifest": "path"}, files=("images/{method}/{wnid}/manifest.parquet",)),
        # The sampling batch size is covered: batched UNet and VAE sums round differently at another batch size.
        group_name=GROUP,
        code_version=code_version("3", profile.retrieval, profile.dataset, profile.split, profile.sample_batch_size),
        **ON_GPU,
        partitions_def=class_method_partitions(profile),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[class_prompts, up.pool_index, up.clip_model, up.diffusion_model, up.dataset_splits, *selection_deps],
        kinds={"faiss", "parquet"},
        description="The augmentation images of a class for a method, as files under images/<method>/<wnid>/ with a "
        "manifest. Prompt methods: one image per prompt from the diffusion backend, batched, one recorded seed per "
        "image, resumable after a kill, images the safety checker flags regenerated with new seeds. Retrieval: "
        "KNN of the class prompt's CLIP text embedding over the pool's image index; aesthetic ≥ 5, "
        "no NSFW flag, near-duplicates among results removed; k grown from 1.4·n to 10·1.4·n until n survive. "
        "Personalized methods: the images of the checkpoint candidate checkpoint_selection chose, linked from "
        "candidates/, "
        "their manifest naming the candidate and checkpoint.",
    )
    def augmentation_images(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        clip_encoder: ClipEncoderResource,
        knn_index: KnnIndexResource,
        diffusion_backend: DiffusionBackendResource,
        compute: ComputeResource,  # thread count and deterministic kernels for generation
    ) -> dg.MaterializeResult:
        from ..core.generation import GenerationError

        db = warehouse.get()
        labels = dict(db.query("SELECT wnid, label FROM class_catalog").iter_rows())
        builders = {get_method(method_and_class(key)[0]).builder for key in context.partition_keys}
        if profile.world:  # the mini world's models and pool live in the image store
            if RETRIEVAL in builders:
                for parts in (("models", "clip"), ("pool_index",), ("web_pool",)):
                    image_store.fetch(*parts)
            if builders & (SAMPLED_HERE | {RETRIEVAL}):  # retrieval: SD's safety checker screens the hits
                image_store.fetch("models", "stable_diffusion")
        # Load each expensive handle once per step, and only when a partition of this run needs it.
        retriever = (
            (*clip_encoder.load(), knn_index.get(), diffusion_backend.load_safety_checker())
            if RETRIEVAL in builders
            else None
        )
        pipelines = {builder: diffusion_backend.load(builder) for builder in builders & SAMPLED_HERE}
        summary, grids, failures, started = [], [], {}, time.perf_counter()
        for key in context.partition_keys:
            method, wnid = method_and_class(key)
            builder = get_method(method).builder
            # A personalized method's images were made (and metered) by candidate_images; this step copies the
            # chosen ones.
            meter = (
                None
                if builder in FINETUNE_BUILDERS
                else Meter(
                    "augmentation_images",
                    str(key),
                    "retrieve" if builder == RETRIEVAL else "generate",
                    method,
                    diffusion_backend.device,
                )
            )
            try:
                if builder == RETRIEVAL:
                    with meter:
                        row, paths = _retrieve_partition(
                            context,
                            db,
                            image_store,
                            *retriever,
                            method,
                            wnid,
                            images_per_class(db, method, profile),
                            labels[wnid],
                        )
                elif builder in FINETUNE_BUILDERS:
                    row, paths = _selected_partition(context, db, image_store, method, wnid, labels[wnid])
                elif builder in pipelines:
                    with meter:
                        row, paths = _generate_partition(
                            context, db, image_store, pipelines[builder], diffusion_backend, method, wnid, labels[wnid]
                        )
                else:
                    raise ValueError(
                        f"augmentation_images[{method}, {wnid}]: method {method!r} has no image builder yet"
                    )
            except (KnnError, GenerationError, ValueError, OSError) as error:
                # One class failing (a KNN server error, a bad image, a safety checker that rejects every
                # sample) must not take the others with it.
                failures[str(key)] = str(error)
                context.log.error(f"augmentation_images[{key}] failed: {error}")
                continue
            if meter is not None:
                meter.images = row["images"]
                record_compute(db, [meter])
            summary.append({**row, "key": str(key)})
            grids.append(paths[:8])
        if failures:
            fail_partially(context, {row["key"]: {"images": row["images"]} for row in summary}, failures)
        table = pl.DataFrame(summary, infer_schema_length=None).drop("key")
        grid = image_grid(grids[:20])
        return dg.MaterializeResult(
            metadata={
                "partitions": len(summary),
                "images": int(table["images"].sum()),
                "short_classes": int((table["images"] < table["needed"]).sum()),
                "regenerated_after_safety_check": int(table["regenerated"].sum())
                if "regenerated" in table.columns
                else 0,
                "seconds": round(time.perf_counter() - started, 1),
                "per_class": dg.MetadataValue.md(frame_markdown(table)),
                "sample_grid": dg.MetadataValue.md(
                    "First 8 per partition (rows in partition order):\n\n"
                    + png_data_uri_markdown(grid, "augmentation images")
                ),
            }
        )

    def _retrieve_partition(
        context,
        db,
        image_store,
        model,
        processor,
        index,
        safety_flags,
        method: str,
        wnid: str,
        n: int,
        label: int,
        folder: str = "images",
        table: str = "augmentation_manifest",
    ) -> tuple[dict, list[str]]:
        """Retrieve one class's images, copy them into <folder>/<method>/<wnid>/ atomically, record the
        manifest in ``table`` (scaling_images: its own folder and table, a larger n)."""
        from ..core.clip import encode_texts

        prompt = db.query("SELECT prompt FROM class_prompts WHERE method = ? AND wnid = ?", [method, wnid])
        if prompt.is_empty():
            raise ValueError(f"no prompt for {method}/{wnid}: materialize class_prompts for this partition first")
        query = encode_texts(model, processor.tokenizer, [prompt["prompt"][0]])[0]
        local = hasattr(index, "embeddings")
        result = retrieve(
            search=lambda k: index.search(query, k),
            embeddings_of=(lambda hits: index.embeddings([h.id for h in hits])) if local else None,
            n=n,
            min_aesthetic=profile.retrieval.min_aesthetic,
            dedup_threshold=profile.retrieval.dedup_threshold,
            image_problem=local_image_problem,
            flags_unsafe=(lambda hits: safety_flags([load_rgb(file_url_path(str(h.metadata["url"]))) for h in hits]))
            if safety_flags
            else None,
            progress=lambda line: context.log.debug(f"retrieval[{wnid}] {line}"),
            columns=FilterColumns(
                profile.retrieval.aesthetic_column, profile.retrieval.nsfw_column, profile.retrieval.nsfw_threshold
            ),
        )
        for line in result.skipped.values():
            context.log.warning(f"retrieval[{method}, {wnid}]: {line}")
        final = image_store.path(folder, method, wnid)
        rows = []
        with atomic_folder(final) as tmp:
            for rank, hit in enumerate(result.kept):
                pool_id = int(hit.metadata.get("pool_id", hit.id))
                name = f"{rank:05d}_{pool_id}.png"
                shutil.copyfile(file_url_path(str(hit.metadata["url"])), tmp / name)
                rows.append(
                    {
                        "method": method,
                        "wnid": wnid,
                        "rank": rank,
                        "path": str(final / name),
                        "pool_id": pool_id,
                        "caption": hit.metadata.get("caption"),
                        "similarity": hit.similarity,
                        "aesthetic": hit.metadata.get(profile.retrieval.aesthetic_column),
                        "prompt": prompt["prompt"][0],
                        "family": "simple_nows",
                    }
                )
            manifest = pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
            manifest.write_parquet(tmp / "manifest.parquet")
        image_store.publish(folder, method, wnid)
        db.replace(
            table,
            with_file_facts(manifest.with_columns(pl.lit(label, dtype=pl.Int64).alias("label"))),
            where={"method": method, "wnid": wnid},
        )
        context.log.info(
            f"{context.asset_key.to_user_string()}[{method}, {wnid}]: {len(rows)}/{n} images at k={result.k_used} "
            f"(rejected {result.rejected})" + ("" if result.enough else " — NOT ENOUGH: the class will be excluded")
        )
        row = {
            "wnid": wnid,
            "method": method,
            "images": len(rows),
            "needed": n,
            "k": result.k_used,
            **{f"rejected_{k}": v for k, v in result.rejected.items()},
            "filters_skipped": ", ".join(sorted(result.skipped)) or None,
        }
        return row, [r["path"] for r in rows]

    def _generate_partition(
        context,
        db,
        image_store,
        pipeline,
        backend: DiffusionBackendResource,
        method: str,
        wnid: str,
        label: int,
        count: int = 0,
        folder: str = "images",
        table: str = "augmentation_manifest",
    ) -> tuple[dict, list[str]]:
        """Generate one class's images for a generation method (seeded, resumable, NSFW regenerated).
        ``count``: that many images, the class's prompts cycled (scaling_images); 0: one per prompt."""
        from ..core.generation import GenerationRequest, generate_partition

        prompts = db.query(
            "SELECT prompt, family, source_image FROM class_prompts WHERE method = ? AND wnid = ? ORDER BY "
            "prompt_index",
            [method, wnid],
        )
        if prompts.is_empty():
            raise ValueError(f"no prompts for {method}/{wnid}: materialize class_prompts for this partition first")
        if count:  # image i keeps prompt i mod the prompt count; its seed is still its own index's
            prompts = prompts[[i % prompts.height for i in range(count)]]
        boomerang = get_method(method).builder == IMG2IMG
        request = GenerationRequest(
            method,
            wnid,
            prompts["prompt"].to_list(),
            prompts["family"].to_list(),
            base_seed=profile.generation.seed,
            init_images=prompts["source_image"].to_list() if boomerang else None,
            strength=profile.generation.boomerang_strength,
        )
        if boomerang:
            image_store.ensure(request.init_images, context.log.info)
        final = image_store.path(folder, method, wnid)
        records = generate_partition(
            pipeline,
            request,
            final,
            backend.steps,
            1.0 if boomerang else backend.guidance_scale,  # Boomerang is unconditioned: no classifier-free guidance
            backend.batch_size,
            profile.generation.max_attempts,
            progress=lambda line: context.log.debug(f"generation {line}"),
        )
        manifest = pl.DataFrame(
            [
                {
                    "method": method,
                    "wnid": wnid,
                    "rank": r["index"],
                    "path": r["path"],
                    "prompt": r["prompt"],
                    "family": r["family"],
                    "seed": r["seed"],
                    "attempts": r["attempts"],
                }
                for r in records
            ],
            schema=MANIFEST_SCHEMA,
        )
        write_parquet_atomic(manifest, final / "manifest.parquet")
        image_store.publish(folder, method, wnid)
        db.replace(
            table,
            with_file_facts(manifest.with_columns(pl.lit(label, dtype=pl.Int64).alias("label"))),
            where={"method": method, "wnid": wnid},
        )
        regenerated = int((manifest["attempts"] - 1).sum())
        context.log.info(
            f"{context.asset_key.to_user_string()}[{method}, {wnid}]: {manifest.height} images generated "
            f"({regenerated} regenerated after the safety check)"
        )
        row = {
            "wnid": wnid,
            "method": method,
            "images": manifest.height,
            "needed": len(records),
            "regenerated": regenerated,
        }
        return row, manifest["path"].to_list()

    def _selected_partition(context, db, image_store, method: str, wnid: str, label: int) -> tuple[dict, list[str]]:
        """A fine-tuned method: the images of the checkpoint candidate checkpoint_selection chose, linked
        (or copied) from candidates/ into images/<method>/<wnid>/ with their manifest."""
        chosen = db.query(
            "SELECT DISTINCT candidate FROM checkpoint_selection WHERE method = ? AND wnid = ?", [method, wnid]
        )
        if chosen.is_empty():
            raise ValueError(
                f"no checkpoint chosen for {method}/{wnid}: materialize checkpoint_selection for this partition first"
            )
        candidate = chosen["candidate"][0]
        rows = db.query(
            "SELECT * FROM candidate_manifest WHERE method = ? AND wnid = ? AND candidate = ? ORDER BY rank",
            [method, wnid, candidate],
        )
        image_store.ensure(rows["path"], context.log.info)
        final = image_store.path("images", method, wnid)
        with atomic_folder(final) as tmp:
            for source in rows["path"]:
                try:
                    os.link(source, tmp / Path(source).name)
                except OSError:  # another file system
                    shutil.copyfile(source, tmp / Path(source).name)
            linked = rows.with_columns(
                pl.col("path").map_elements(lambda p: str(final / Path(p).name), return_dtype=pl.Utf8)
            )
            manifest = linked.select(
                [
                    pl.col(c).cast(t) if c in linked.columns else pl.lit(None, dtype=t).alias(c)
                    for c, t in MANIFEST_SCHEMA.items()
                ]
            )
            manifest.write_parquet(tmp / "manifest.parquet")
        image_store.publish("images", method, wnid)
        db.replace(
            "augmentation_manifest",
            with_file_facts(manifest.with_columns(pl.lit(label, dtype=pl.Int64).alias("label"))),
            where={"method": method, "wnid": wnid},
        )
        context.log.info(
            f"augmentation_images[{method}, {wnid}]: {manifest.height} images of the chosen checkpoint "
            f"candidate {candidate}"
        )
        return {
            "wnid": wnid,
            "method": method,
            "images": manifest.height,
            "needed": manifest.height,
            "candidate": candidate,
        }, manifest["path"].to_list()

    @dg.asset_check(
        asset=augmentation_images,
        description="Every materialized partition has n images, none NSFW-flagged in the pool, and no two "
        "identical files.",
    )
    def augmentation_images_are_valid(
        warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.AssetCheckResult:
        db = warehouse.get()
        manifest = (
            db.query("SELECT m.*, p.nsfw FROM augmentation_manifest m LEFT JOIN web_pool p USING (pool_id)")
            if db.has_table("web_pool")
            else db.query("SELECT *, false AS nsfw FROM augmentation_manifest")
        )
        image_store.ensure(manifest["path"])
        counts = manifest.group_by("method", "wnid").len()
        needed = {m: images_per_class(db, m, profile) for m in counts["method"].unique()}
        short = counts.filter(pl.col("len") < pl.col("method").replace_strict(needed, return_dtype=pl.Int64))
        excluded = excluded_wnids(db)
        unexpected_short = short.filter(~pl.col("wnid").is_in(list(excluded)))
        nsfw = int(manifest["nsfw"].fill_null(False).sum())
        digests = manifest.with_columns(
            pl.col("path")
            .map_elements(lambda p: hashlib.sha1(open(p, "rb").read()).hexdigest(), return_dtype=pl.Utf8)
            .alias("sha1")
        )
        exact_duplicates = int(
            digests.group_by("method", "wnid", "sha1").len().filter(pl.col("len") > 1)["len"].sum() or 0
        )
        return dg.AssetCheckResult(
            passed=nsfw == 0 and exact_duplicates == 0 and unexpected_short.is_empty(),
            metadata={
                "partitions": counts.height,
                "short_partitions": short.height,
                "short_not_excluded": unexpected_short.height,
                "nsfw_images": nsfw,
                "exact_duplicate_files": exact_duplicates,
            },
        )

    retrieval_methods = keys_with_builder(RETRIEVAL, profile.methods)

    @dg.asset(
        metadata=outputs(tables=("excluded_classes",)),
        group_name=GROUP,
        code_version=code_version("1", retrieval_methods),
        deps=[augmentation_images, up.dataset_splits, up.class_catalog],
        kinds={"parquet"},
        description="Classes for which retrieval could not find n images that pass the filters. The paper excludes "
        "them from augmentation, training and evaluation for every method (10 ImageNet classes, 5 Caltech256).",
    )
    def excluded_classes(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        db = warehouse.get()
        n = needed_per_class(db, profile)
        catalog = db.query("SELECT wnid, name FROM class_catalog")
        counts = db.query(
            "SELECT wnid, min(images) AS images FROM (SELECT method, wnid, count(*) AS images FROM "
            "augmentation_manifest "
            f"WHERE method IN ({', '.join('?' * len(retrieval_methods)) or 'NULL'}) GROUP BY ALL) GROUP BY wnid",
            list(retrieval_methods),
        )
        if not retrieval_methods:  # the rule is retrieval's: without it no class is excluded
            counts = catalog.select("wnid").with_columns(pl.lit(n, dtype=pl.Int64).alias("images"))
        table = (
            catalog.join(counts, on="wnid", how="left")
            .with_columns(pl.col("images").fill_null(0))
            .filter(pl.col("images") < n)
            .sort("wnid")
        )
        db.replace("excluded_classes", table)
        context.log.info(f"excluded classes: {table.height} ({', '.join(table['wnid']) or 'none'})")
        # The data version is the excluded wnids: what reads this table is stale only when they change.
        version = hashlib.sha1(",".join(table["wnid"].to_list()).encode()).hexdigest()[:16]
        return dg.MaterializeResult(
            metadata={
                "excluded": table.height,
                "needed_per_class": n,
                "classes": dg.MetadataValue.md(frame_markdown(table)) if table.height else "none",
            },
            data_version=dg.DataVersion(version),
        )

    @dg.asset(
        metadata=outputs(tables=("class_fidelity",)),
        group_name=GROUP,
        code_version=code_version("2"),
        **ON_GPU,
        deps=[augmentation_images, up.fidelity_classifier] + ([up.fidelity_judge] if profile.world else []),
        kinds={"pytorch", "parquet"},
        description="Per method and class: class fidelity — the share of a method's augmentation images the "
        "unbiased judge "
        "(trained on labelled images of both domains) labels as the class they were made for — and target-domain "
        "recognizability — the share the classifier trained on the real target alone recognizes, i.e. how target-like "
        "they look (the paper's domain-gap argument). For retrieval in the mini world, also its precision by "
        "ground truth "
        "(web_pool_truth), against which the judge is checked.",
    )
    def class_fidelity(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:  # compute: its setup fixes the thread count the judges run with
        from ..core.generation import classify_paths

        db = warehouse.get()
        catalog = db.query("SELECT label, wnid, name FROM class_catalog ORDER BY label")
        judges = {
            "target_recognizability": load_checkpoint(
                image_store.fetch("models", "fidelity_classifier.safetensors"), "fidelity_classifier"
            )
        }
        if profile.world:
            judges["fidelity"] = load_checkpoint(
                image_store.fetch("models", "fidelity_judge.safetensors"), "fidelity_judge"
            )
        manifest = db.query(
            "SELECT method, wnid, label, path, pool_id FROM augmentation_manifest ORDER BY method, wnid, rank"
        )
        image_store.ensure(manifest["path"], context.log.info)
        judging = time.perf_counter()
        predictions = classify_paths(judges, profile.classifier, catalog.height, manifest["path"].to_list())
        scored = manifest.with_columns(
            pl.Series(f"by_{name}", values, dtype=pl.Int64) for name, values in predictions.items()
        )
        if profile.world:  # retrieved pool images have a ground truth
            truth = db.query("SELECT pool_id, kind, wnid AS true_wnid FROM web_pool_truth")
            scored = scored.join(truth, on="pool_id", how="left").with_columns(
                pl.when(pl.col("pool_id").is_null())
                .then(None)
                .otherwise((pl.col("kind") != "distractor") & (pl.col("true_wnid") == pl.col("wnid")))
                .alias("truly_of_class")
            )
        figures = [(pl.col(f"by_{name}") == pl.col("label")).mean().alias(name) for name in judges]
        if "truly_of_class" in scored.columns:
            figures.append(pl.col("truly_of_class").mean().alias("ground_truth_precision"))
        per_class = scored.group_by("method", "wnid").agg(*figures, pl.len().alias("images")).sort("method", "wnid")
        per_method = scored.group_by("method").agg(*figures, pl.len().alias("images")).sort("method")
        db.replace("class_fidelity", per_class)
        record_compute(
            db,
            [
                timed(
                    "class_fidelity",
                    "",
                    "judge",
                    None,
                    profile.classifier.device,
                    time.perf_counter() - judging,
                    manifest.height,
                )
            ],
        )
        for row in per_method.iter_rows(named=True):
            context.log.info(
                f"class fidelity {row['method']}: "
                + ", ".join(
                    f"{k} {row[k]:.3f}"
                    for k in per_method.columns
                    if k not in ("method", "images") and row[k] is not None
                )
                + f" over {row['images']} images"
            )
        metadata = {
            "per_method": dg.MetadataValue.md(frame_markdown(per_method)),
            "per_class": dg.MetadataValue.md(frame_markdown(per_class)),
            **{f"{name}_{r['method']}": r[name] for r in per_method.iter_rows(named=True) for name in judges},
        }
        if "ground_truth_precision" in per_method.columns:
            for row in per_method.filter(pl.col("method").is_in(retrieval_methods)).iter_rows(named=True):
                metadata[f"{row['method']}_ground_truth_precision"] = row["ground_truth_precision"]
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset_check(
        asset=class_fidelity,
        description="The judge is unbiased where the truth is known: on retrieved pool images its class "
        "fidelity is within "
        f"{JUDGE_TOLERANCE} of retrieval's precision by ground truth (mini world; passes trivially where there "
        f"is no ground truth).",
    )
    def judge_agrees_with_ground_truth(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        db = warehouse.get()
        table = db.query("SELECT * FROM class_fidelity").filter(pl.col("method").is_in(retrieval_methods))
        if "ground_truth_precision" not in table.columns or table.is_empty():
            return dg.AssetCheckResult(
                passed=True, metadata={"compared": "nothing: no retrieval images with ground truth"}
            )
        judged = float((table["fidelity"] * table["images"]).sum() / table["images"].sum())
        truth = float((table["ground_truth_precision"] * table["images"]).sum() / table["images"].sum())
        return dg.AssetCheckResult(
            passed=abs(judged - truth) <= JUDGE_TOLERANCE,
            metadata={"judge_fidelity": judged, "ground_truth_precision": truth, "difference": judged - truth},
        )

    built = {
        "augmentation_images": augmentation_images,
        "augmentation_images_are_valid": augmentation_images_are_valid,
        "excluded_classes": excluded_classes,
        "class_fidelity": class_fidelity,
        "judge_agrees_with_ground_truth": judge_agrees_with_ground_truth,
    }
    scaled = scaling_method_keys(profile)
    if not scaled:
        return built
    largest_ratio = max(profile.scaling.ratios)

    @dg.asset(
        metadata=outputs(paths={"scaling_manifest": "path"}, files=("scaling/{method}/{wnid}/manifest.parquet",)),
        group_name="scaling",
        code_version=code_version(
            "1", profile.retrieval, profile.generation, largest_ratio, profile.dataset, profile.split
        ),
        **ON_GPU,
        partitions_def=dg.MultiPartitionsDefinition(
            {"method": dg.StaticPartitionsDefinition(scaled), "wnid": class_partitions}
        ),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[
            dg.AssetDep(up.class_prompts, partition_mapping=same_class_of(scaled)),
            up.pool_index,
            up.clip_model,
            up.diffusion_model,
            up.dataset_splits,
        ],
        kinds={"faiss", "parquet"},
        description="The scaling analysis's images of a class for a method, enough for its largest ratio: retrieval's "
        "⌈largest ratio × n⌉ nearest images (k grows to 10·1.4·that; a pool that runs out leaves the class short, and "
        "the short cells say so), a prompt method's pool of factor × that, the class's prompts cycled with every "
        "image's own seed. Under scaling/<method>/<wnid>/ with a manifest (table scaling_manifest); the first images "
        "coincide with augmentation_images' where the seeds do.",
    )
    def scaling_images(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        clip_encoder: ClipEncoderResource,
        knn_index: KnnIndexResource,
        diffusion_backend: DiffusionBackendResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        from ..core.generation import GenerationError

        db = warehouse.get()
        labels = dict(db.query("SELECT wnid, label FROM class_catalog").iter_rows())
        builders = {get_method(method_and_class(key)[0]).builder for key in context.partition_keys}
        if profile.world:
            for parts in (("models", "clip"), ("pool_index",), ("web_pool",), ("models", "stable_diffusion")):
                image_store.fetch(*parts)
        retriever = (
            (*clip_encoder.load(), knn_index.get(), diffusion_backend.load_safety_checker())
            if RETRIEVAL in builders
            else None
        )
        pipeline = diffusion_backend.load(TXT2IMG) if TXT2IMG in builders else None
        n = math.ceil(largest_ratio * needed_per_class(db, profile))
        generated = math.ceil(profile.generation.factor * n / profile.retrieval.ratio)
        summary, failures = [], {}
        for key in context.partition_keys:
            method, wnid = method_and_class(key)
            retrieving = get_method(method).builder == RETRIEVAL
            try:
                with Meter(
                    "scaling_images",
                    str(key),
                    "retrieve" if retrieving else "generate",
                    method,
                    diffusion_backend.device,
                ) as meter:
                    if retrieving:
                        row, _ = _retrieve_partition(
                            context,
                            db,
                            image_store,
                            *retriever,
                            method,
                            wnid,
                            n,
                            labels[wnid],
                            folder="scaling",
                            table="scaling_manifest",
                        )
                    else:
                        row, _ = _generate_partition(
                            context,
                            db,
                            image_store,
                            pipeline,
                            diffusion_backend,
                            method,
                            wnid,
                            labels[wnid],
                            count=generated,
                            folder="scaling",
                            table="scaling_manifest",
                        )
            except (KnnError, GenerationError, ValueError, OSError) as error:
                failures[str(key)] = str(error)
                context.log.error(f"scaling_images[{key}] failed: {error}")
                continue
            meter.images = row["images"]
            record_compute(db, [meter])
            summary.append({**row, "needed": n if retrieving else generated, "key": str(key)})
        if failures:
            fail_partially(context, {row["key"]: {"images": row["images"]} for row in summary}, failures)
        table = pl.DataFrame(summary, infer_schema_length=None).drop("key")
        return dg.MaterializeResult(
            metadata={
                "partitions": table.height,
                "images": int(table["images"].sum()),
                "largest_ratio": largest_ratio,
                "short_classes": int((table["images"] < table["needed"]).sum()),
                "per_class": dg.MetadataValue.md(frame_markdown(table)),
            }
        )

    return {**built, "scaling_images": scaling_images}
