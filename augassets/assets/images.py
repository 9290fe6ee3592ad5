"""Stage: per class and method, the augmentation images — retrieved, generated, for the
personalized methods the chosen checkpoint candidate's, or a method plugin's (plugin_images.py) — and
the classes retrieval cannot fill, excluded from every method (paper §3). ``retrieve_partition`` and
``generate_partition_images`` also make the scaling analysis's images (scaling.py).

Why this module is long: the ways a partition's images are made (retrieved, generated, copied from
the chosen candidate) share its manifest (manifests.py), its atomic folder and the asset that
dispatches between them; scaling_images reuses them."""

import hashlib
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.compute import Meter
from ..core.compute import record as record_compute
from ..core.files import atomic_folder, file_url_path
from ..core.images import image_grid, png_data_uri_markdown
from ..core.knn import KnnError
from ..core.markdown import excluded_wnids, frame_markdown
from ..core.methods import FINETUNE_BUILDERS, IMG2IMG, PLUGIN, RETRIEVAL, TXT2IMG, get_method, keys_with_builder
from ..core.plugins import PluginError
from ..core.retrieval import retrieve_from_index
from ..executors import ON_GPU
from ..integrity import outputs
from ..partitions import (
    class_method_partitions,
    image_method_keys,
    method_and_class,
    same_class_of,
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
from ..versions import code_version
from .candidates import candidate_conditionings, chosen_candidate
from .manifests import MANIFEST_SCHEMA, publish_and_record, record_partition
from .partial import fail_partially
from .plugin_images import StepResources, plugin_partition
from .prompts import images_per_class, needed_per_class

GROUP = "images"
SAMPLED_HERE = frozenset(
    {TXT2IMG, IMG2IMG}
)  # builders whose images this stage samples (fine-tuned ones: candidate_images)


def short_partitions(counts: pl.DataFrame, needed: dict[str, int]) -> pl.DataFrame:
    """The (method, wnid) rows of ``counts`` (their image count in ``len``) below their method's ``needed``.
    No rows at all (retrieval excluded every class) is no short partition, not a type error."""
    if counts.is_empty():
        return counts
    return counts.filter(pl.col("len") < pl.col("method").replace_strict(needed, return_dtype=pl.Int64))


def retrieve_partition(
    profile: Profile,
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
    result = retrieve_from_index(
        profile.retrieval,
        index,
        query,
        n,
        safety_flags,
        progress=lambda line: context.log.debug(f"retrieval[{wnid}] {line}"),
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
    publish_and_record(db, image_store, manifest, method, wnid, label, folder, table)
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


def generate_partition_images(
    profile: Profile,
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
    ``count``: that many images, the class's prompts cycled (scaling_images); 0: one per prompt. A
    personalized method generates from the checkpoint checkpoint_selection chose for the class (its
    conditioning or pseudo-word, and its UNet for ⑦ ⑨), as its candidates were made."""
    from ..core.generation import GenerationRequest, generate_partition

    prompts = db.query(
        "SELECT prompt, family, source_image FROM class_prompts WHERE method = ? AND wnid = ? ORDER BY prompt_index",
        [method, wnid],
    )
    if prompts.is_empty():
        raise ValueError(f"no prompts for {method}/{wnid}: materialize class_prompts for this partition first")
    if count:  # image i keeps prompt i mod the prompt count; its seed is still its own index's
        prompts = prompts[[i % prompts.height for i in range(count)]]
    boomerang = get_method(method).builder == IMG2IMG
    texts, states, chosen = prompts["prompt"].to_list(), None, None
    if get_method(method).builder in FINETUNE_BUILDERS:
        texts, states, chosen = selected_conditionings(db, image_store, pipeline, method, wnid, prompts)
    request = GenerationRequest(
        method,
        wnid,
        texts,
        prompts["family"].to_list(),
        base_seed=profile.generation.seed,
        init_images=prompts["source_image"].to_list() if boomerang else None,
        strength=profile.generation.boomerang_strength,
        conditionings=states,
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
    rows = [
        {
            "method": method,
            "wnid": wnid,
            "rank": r["index"],
            "path": r["path"],
            "prompt": r["prompt"],
            "family": r["family"],
            "seed": r["seed"],
            "attempts": r["attempts"],
            **({} if chosen is None else {"candidate": chosen[0], "checkpoint": chosen[1][r["index"]]}),
        }
        for r in records
    ]
    manifest = record_partition(db, image_store, rows, final, method, wnid, label, folder, table)
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


def selected_conditionings(db, image_store, pipeline, method: str, wnid: str, prompts: pl.DataFrame):
    """A personalized method's images beyond its candidates' (the scaling analysis): the class's
    chosen candidate (checkpoint_selection), its UNet loaded into ``pipeline`` for ⑦ ⑨, and per image
    (``prompts``' rows) the text it stands for and its text-encoder states; clusters drawn in
    proportion to their sizes. Returns (texts, states, (candidate, checkpoint per image))."""
    from ..core.finetune import draw_clusters

    candidate = chosen_candidate(db, method, wnid)
    checkpoints = db.query(
        "SELECT * FROM finetune_checkpoints WHERE method = ? AND wnid = ? AND candidate = ? ORDER BY cluster",
        [method, wnid, candidate],
    )
    image_store.ensure(checkpoints["checkpoint"].unique())
    clusters = draw_clusters(checkpoints["cluster_size"].to_list(), prompts.height)
    texts, states = candidate_conditionings(image_store, pipeline, method, checkpoints, prompts, clusters)
    return texts, states, (candidate, [checkpoints["checkpoint"][c] for c in clusters])


def selected_partition(context, db, image_store, method: str, wnid: str, label: int) -> tuple[dict, list[str]]:
    """A fine-tuned method: the images of the checkpoint candidate checkpoint_selection chose, linked
    (or copied) from candidates/ into images/<method>/<wnid>/ with their manifest."""
    candidate = chosen_candidate(db, method, wnid)
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
    publish_and_record(db, image_store, manifest, method, wnid, label, "images", "augmentation_manifest")
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


def plugin_signatures(profile: Profile) -> list[tuple]:
    """The plugins' keys, versions and settings among the study's methods (their images' code version)."""
    return [get_method(key).plugin.signature for key in keys_with_builder(PLUGIN, profile.methods)]


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
        code_version=code_version(
            "3",
            profile.retrieval,
            profile.dataset,
            profile.split,
            profile.sample_batch_size,
            *plugin_signatures(profile),  # nothing when the study runs no plugin
        ),
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
        "candidates/, their manifest naming the candidate and checkpoint. Method plugins: the plugin's own images, "
        "made in resumable chunks, those the safety checker flags replaced.",
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
        plugin_resources = StepResources(profile, context.log, image_store, clip_encoder, knn_index, diffusion_backend)
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
                        row, paths = retrieve_partition(
                            profile,
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
                    row, paths = selected_partition(context, db, image_store, method, wnid, labels[wnid])
                elif builder in pipelines:
                    with meter:
                        row, paths = generate_partition_images(
                            profile,
                            context,
                            db,
                            image_store,
                            pipelines[builder],
                            diffusion_backend,
                            method,
                            wnid,
                            labels[wnid],
                        )
                elif builder == PLUGIN:
                    with meter:
                        needed = images_per_class(db, method, profile)
                        row, paths = plugin_partition(plugin_resources, context, db, method, wnid, needed)
                else:
                    raise ValueError(
                        f"augmentation_images[{method}, {wnid}]: method {method!r} has no image builder yet"
                    )
            except (KnnError, GenerationError, PluginError, ValueError, OSError) as error:
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
        short = short_partitions(counts, needed)
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

    return {
        "augmentation_images": augmentation_images,
        "augmentation_images_are_valid": augmentation_images_are_valid,
        "excluded_classes": excluded_classes,
    }
