"""The foundation: the web pool, the CLIP model and KNN index built from it, and the Stable Diffusion
pipeline trained on it — the three things the paper's question is about (DESIGN §2).

Why this module is long: one builder per foundation asset, each short, with the shipped world's
install path beside the training path they share; the lineage reads top to bottom in one file.

In the mini world these are materialized here: pool → CLIP → index and pool → VAE/UNet → diffusion
model, one builder function per asset, each given the earlier definitions (``up``) to depend on by
object; ``diffusion_fidelity`` (sampling the model and scoring its samples with the fidelity judge)
comes after the calibration stage. With real data (a profile without a mini world) the same keys are
external assets standing for the LAION pool, CLIP ViT-L/14, its KNN index and SD v1.4, so the
lineage reads the same in both worlds.
"""

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import polars as pl

from ..core.compute import record as record_compute
from ..core.compute import timed
from ..core.datasets import FashionMnistSource
from ..core.files import atomic_folder, file_url_path, load_checkpoint, save_image_atomic
from ..core.images import image_grid, png_data_uri_markdown
from ..core.judge import sample_fidelity
from ..core.knn import build_index, choose_index_factory, embedding_shards
from ..core.markdown import frame_markdown
from ..core.prompts import clip_templates, simple_prompt
from ..core.web_pool import PoolSources, check_pool_rows, pool_items, write_pool
from ..core.world import ShippedWorld, ShippedWorldError, sha256_of
from ..executors import ON_GPU
from ..integrity import outputs
from ..profiles import Profile
from ..resources import ComputeResource, DiffusionBackendResource, ImageStoreResource, WarehouseResource
from ..versions import code_version

if TYPE_CHECKING:
    import torch

GROUP = "foundation"
# What the mini world trains for long, and ships: asset → its files in the image store.
SHIPPED_FILES = {
    "clip_model": ("models", "clip"),
    "vae": ("models", "vae"),
    "unet": ("models", "unet"),
    "fidelity_judge": ("models", "fidelity_judge.safetensors"),
}


def _walk(key: dg.AssetKey, lookup) -> dict[str, str]:
    """``key`` and everything upstream of it → code version; ``lookup(key)``: (code version, parent keys)."""
    versions, stack = {}, [key]
    while stack:
        key = stack.pop()
        if key.to_user_string() in versions:
            continue
        version, parents = lookup(key)
        versions[key.to_user_string()] = version or ""
        stack.extend(parents)
    return versions


def lineage_versions(graph, key: dg.AssetKey) -> dict[str, str]:
    """The code versions of asset ``key`` and of everything upstream of it in a resolved asset graph:
    what a shipped model must have been made by to stand in for training it now."""
    return _walk(key, lambda k: (graph.get(k).code_version, graph.get(k).parent_keys))


def defined_lineage(name: str, version: str, deps: list, known) -> dict[str, str]:
    """``lineage_versions`` of an asset being defined (``name``, ``version``, ``deps``), from the
    definitions made before it (``known``): what its body checks a shipped world against."""
    specs = {
        key: spec for item in known if isinstance(item, dg.AssetsDefinition) for key, spec in item.specs_by_key.items()
    }
    me = dg.AssetKey(name)
    parents = [key for dep in deps for key in dep.keys]
    return _walk(
        me, lambda k: (version, parents) if k == me else (specs[k].code_version, [d.asset_key for d in specs[k].deps])
    )


def install_shipped(
    context: dg.AssetExecutionContext, profile: Profile, asset: str, versions: dict[str, str], final: Path
) -> dict | None:
    """Install ``asset``'s files from the profile's shipped world into ``final`` (a folder; a file
    when the asset is one checkpoint) and return the metadata that says so; None where the profile
    trains its world. ``versions``: ``defined_lineage`` of the asset. A stale, missing or damaged
    shipped world fails the asset naming the cause."""
    if not profile.world.shipped:
        return None
    started = time.perf_counter()
    try:
        world = ShippedWorld.open(profile.world.shipped)
        folder = final if not final.suffix else final.with_name(final.name + ".shipped")
        with atomic_folder(folder) as tmp:
            entry = world.install(asset, versions, tmp)
        if folder != final:  # one checkpoint file: moved into place, its folder removed
            os.replace(folder / final.name, final)
            folder.rmdir()
    except ShippedWorldError as error:
        raise dg.Failure(description=str(error)) from None
    context.log.info(
        f"{asset}: installed from shipped world {world.name} ({len(entry['files'])} files, checksums verified)"
    )
    figures = {f"shipped_{name}": value for name, value in entry["figures"].items()}
    return {
        "source": f"shipped world {world.name}",
        "manifest": dg.MetadataValue.path(str(world.manifest_path)),
        "manifest_sha256": sha256_of(world.manifest_path),
        "install_seconds": round(time.perf_counter() - started, 2),
        **figures,
    }


def _pool_rows(db, min_aesthetic: float | None = None) -> tuple[pl.DataFrame, dict[str, int]]:
    """Usable pool rows (with a local ``path``) in index order, and the rows skipped per reason."""
    where = "" if min_aesthetic is None else f"WHERE aesthetic >= {float(min_aesthetic)}"
    return check_pool_rows(db.query(f"SELECT * FROM web_pool {where} ORDER BY pool_id"))


def _grid_md(rows: list[list[str]], alt: str, store: ImageStoreResource, name: str) -> dg.MetadataValue:
    grid = image_grid(rows)
    save_image_atomic(grid, store.path("reports", f"{name}.png"))
    store.publish("reports", f"{name}.png")
    return dg.MetadataValue.md(png_data_uri_markdown(grid, alt))


def web_pool_asset(profile: Profile, up: SimpleNamespace) -> dg.AssetsDefinition:
    world = profile.world

    @dg.asset(
        metadata=outputs(tables=("web_pool", "web_pool_truth"), files=("web_pool",)),
        group_name=GROUP,
        code_version=code_version("2", world.pool, profile.split, profile.dataset.target),
        deps=[up.dataset_splits],
        kinds={"parquet"},
        description="The mini web pool (the mini world's LAION): unused Fashion-MNIST training images moved to a "
        "web-photo domain, with noisy captions, aesthetic scores, an NSFW marker, distractors and planted "
        "near-duplicates of test/val images (ground truth in `web_pool_truth`). clip-retrieval layout.",
    )
    def web_pool(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, image_store: ImageStoreResource
    ) -> dg.MaterializeResult:
        started = time.perf_counter()
        db = warehouse.get()
        catalog = db.query("SELECT wnid, source_label, lemmas, hypernym FROM class_catalog ORDER BY label")
        splits = db.query("SELECT split, wnid, item FROM dataset_splits")
        source = FashionMnistSource(profile.dataset, image_store.path("datasets", profile.dataset.class_list))
        used = set(splits.filter(pl.col("split") != "test")["item"])
        rng = np.random.default_rng([world.pool.seed, 17])
        class_items = {}
        for row in catalog.iter_rows(named=True):
            unused = [item for item in source.items("train", row["wnid"], row["source_label"]) if item not in used]
            class_items[row["wnid"]] = [unused[i] for i in rng.permutation(len(unused))[: world.pool.per_class]]
        duplicates = []
        for split, n in (("test", world.pool.planted_test_duplicates), ("val", world.pool.planted_val_duplicates)):
            candidates = splits.filter(pl.col("split") == split)
            for i in rng.permutation(candidates.height)[:n]:
                duplicates.append((candidates["item"][int(i)], split, candidates["wnid"][int(i)]))

        sources = PoolSources(
            pixels=source.pixels,
            target_image=source.image,
            class_items=class_items,
            duplicate_items=duplicates,
            lemmas={r["wnid"]: list(r["lemmas"]) for r in catalog.iter_rows(named=True)},
            hypernyms=dict(zip(catalog["wnid"], catalog["hypernym"])),
        )
        final = image_store.path("web_pool")
        with atomic_folder(final) as tmp:
            metadata, truth = write_pool(pool_items(sources, world.pool), tmp, final, context.log.info)
        image_store.publish("web_pool")
        db.replace("web_pool", metadata.with_row_index("pool_id").with_columns(pl.col("pool_id").cast(pl.Int64)))
        db.replace("web_pool_truth", truth)
        kinds = dict(truth.group_by("kind").len().iter_rows())
        caption_kinds = dict(truth.group_by("caption_kind").len().iter_rows())
        sample = [file_url_path(u) for u in metadata["url"].head(64)]
        return dg.MaterializeResult(
            metadata={
                "images": metadata.height,
                "class_images": kinds.get("class", 0),
                "distractors": kinds.get("distractor", 0),
                "planted_duplicates": kinds.get("planted_duplicate", 0),
                "nsfw_flagged": int(metadata["nsfw"].sum()),
                "aesthetic_below_5": int((metadata["aesthetic"] < 5).sum()),
                "caption_kinds": caption_kinds,
                "folder": dg.MetadataValue.path(image_store.url("web_pool")),
                "seconds": round(time.perf_counter() - started, 1),
                "sample_grid": _grid_md(
                    [sample[i : i + 16] for i in range(0, 64, 16)], "pool samples", image_store, "web_pool_grid"
                ),
                "sample_captions": dg.MetadataValue.md(
                    frame_markdown(metadata.select("caption", "aesthetic", "nsfw").head(12))
                ),
            }
        )

    return web_pool


def clip_model_asset(profile: Profile, up: SimpleNamespace) -> dg.AssetsDefinition:
    world = profile.world

    version = code_version("1", world.clip, world.pool.image_size)
    lineage = defined_lineage("clip_model", version, [up.web_pool], vars(up).values())

    @dg.asset(
        metadata=outputs(files=("models/clip",)),
        group_name=GROUP,
        code_version=version,
        deps=[up.web_pool],
        **ON_GPU,
        kinds={"pytorch", "transformers"},
        description="A small transformers CLIPModel trained contrastively on the pool's image–caption pairs, saved "
        "with a CLIPProcessor whose tokenizer is the real 49,408-token CLIP BPE. Zero-shot accuracy on the test split.",
    )
    def clip_model(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        from transformers import CLIPModel, CLIPTokenizer

        from ..core.clip import build_processor, train_clip, zero_shot_scores

        db = warehouse.get()
        rows, skipped = _pool_rows(db)
        paths, captions = rows["path"].to_list(), rows["caption"].to_list()
        final = image_store.path("models", "clip")
        made = install_shipped(context, profile, "clip_model", lineage, final)
        if made is None:
            image_store.ensure(paths, context.log.info)
            with atomic_folder(final) as tmp:
                processor = build_processor(tmp, world.pool.image_size)
                result = train_clip(
                    paths, captions, processor.tokenizer, world.clip, world.pool.image_size, progress=context.log.info
                )
                result.model.save_pretrained(tmp, safe_serialization=True)
                processor.save_pretrained(tmp)
            made = {
                "source": "trained here",
                "final_contrastive_loss": result.losses[-1],
                "losses": result.losses,
                "train_seconds": round(result.seconds, 1),
                "pairs_per_second": round(result.pairs_per_second, 1),
            }
        image_store.publish("models", "clip")
        model, tokenizer = CLIPModel.from_pretrained(final).eval(), CLIPTokenizer.from_pretrained(final)
        catalog = db.query("SELECT label, wnid, name FROM class_catalog ORDER BY label")
        test = db.query("SELECT path, label FROM dataset_splits WHERE split = 'test' ORDER BY label, item")
        # the simple prompt ①, and CLIP's 80 ImageNet templates ensembled (its paper's zero-shot protocol)
        prompt_sets = {
            "simple": [[simple_prompt(name)] for name in catalog["name"]],
            "ensemble": [[template.format(name) for template in clip_templates()] for name in catalog["name"]],
        }
        image_store.ensure(test["path"], context.log.info)
        scores = zero_shot_scores(
            model, tokenizer, test["path"].to_list(), test["label"].to_list(), prompt_sets, world.pool.image_size
        )
        (accuracy, per_class), (ensemble, ensemble_per_class) = scores["simple"], scores["ensemble"]
        table = catalog.with_columns(
            pl.col("label").replace_strict(per_class, return_dtype=pl.Float64).alias("zero_shot_top1"),
            pl.col("label")
            .replace_strict(ensemble_per_class, return_dtype=pl.Float64)
            .alias("zero_shot_top1_ensemble"),
        )
        context.log.info(
            f"clip: zero-shot top-1 {accuracy:.4f} with the simple prompt, {ensemble:.4f} with the "
            f"{len(clip_templates())} "
            f"templates ensembled, on {test.height} test images (chance {1 / catalog.height:.3f})"
        )
        return dg.MaterializeResult(
            metadata={
                "zero_shot_top1": accuracy,
                "zero_shot_top1_ensemble": ensemble,
                "training_pairs": len(paths),
                "skipped_pool_rows": skipped,
                "chance": 1 / catalog.height,
                "zero_shot_per_class": dg.MetadataValue.md(frame_markdown(table)),
                "parameters": sum(p.numel() for p in model.parameters()),
                "folder": dg.MetadataValue.path(image_store.url("models", "clip")),
                **made,
            }
        )

    return clip_model


def pool_index_asset(profile: Profile, up: SimpleNamespace) -> dg.AssetsDefinition:
    world = profile.world

    @dg.asset(
        metadata=outputs(files=("pool_index",)),
        group_name=GROUP,
        code_version=code_version("1"),
        deps=[up.clip_model, up.web_pool],
        kinds={"faiss", "numpy"},
        description="CLIP image and text embeddings of the pool (img_emb/, text_emb/ numpy shards) and faiss "
        "inner-product indexes over them (image.index, text.index) next to the metadata parquet: a folder a "
        "clip-retrieval back can serve.",
    )
    def pool_index(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:  # compute: its setup fixes the thread count the embeddings are computed with
        import faiss
        from transformers import CLIPModel, CLIPTokenizer

        from ..core.clip import encode_image_batches, encode_texts

        started = time.perf_counter()
        rows, skipped = _pool_rows(warehouse.get())
        paths, captions = rows["path"].to_list(), rows["caption"].to_list()
        image_store.ensure(paths, context.log.info)
        clip_folder = image_store.fetch("models", "clip")
        model = CLIPModel.from_pretrained(clip_folder).eval()
        tokenizer = CLIPTokenizer.from_pretrained(clip_folder)
        final = image_store.path("pool_index")
        with atomic_folder(final) as tmp:
            for sub in ("img_emb", "text_emb", "metadata"):
                (tmp / sub).mkdir()
            image_shards = []
            for shard, batch in enumerate(encode_image_batches(model, paths, world.pool.image_size, batch_size=4096)):
                np.save(tmp / "img_emb" / f"img_emb_{shard}.npy", batch)
                image_shards.append(tmp / "img_emb" / f"img_emb_{shard}.npy")
                context.log.info(f"pool_index: embedded {min((shard + 1) * 4096, len(paths))}/{len(paths)} images")
            text = encode_texts(model, tokenizer, captions)
            np.save(tmp / "text_emb" / "text_emb_0.npy", text)
            dim = text.shape[1]
            image_index = build_index((np.load(p) for p in image_shards), dim, len(paths))
            faiss.write_index(image_index, str(tmp / "image.index"))
            faiss.write_index(build_index([text], dim, len(captions)), str(tmp / "text.index"))
            # Row order = index order; pool_id maps an index id back to the pool (skipped rows leave gaps).
            rows.drop("path").write_parquet(tmp / "metadata" / "metadata_0.parquet")
        image_store.publish("pool_index")
        db = warehouse.get()
        record_compute(
            db,
            [
                timed(
                    "pool_index",
                    "",
                    "embed pool",
                    None,
                    str(model.device),
                    time.perf_counter() - started,
                    len(paths) + len(captions),
                )
            ],
        )
        return dg.MaterializeResult(
            metadata={
                "vectors": image_index.ntotal,
                "skipped_pool_rows": skipped,
                "dimension": dim,
                "index_factory": choose_index_factory(len(paths)),
                "folder": dg.MetadataValue.path(image_store.url("pool_index")),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )

    return pool_index


def vae_asset(profile: Profile, up: SimpleNamespace) -> dg.AssetsDefinition:
    world = profile.world

    version = code_version(
        "1",
        world.diffusion.vae_channels,
        world.diffusion.latent_channels,
        world.diffusion.vae_epochs,
        world.diffusion.vae_batch_size,
        world.diffusion.vae_lr,
        world.pool.image_size,
    )
    lineage = defined_lineage("vae", version, [up.web_pool], vars(up).values())

    @dg.asset(
        metadata=outputs(files=("models/vae",)),
        group_name=GROUP,
        code_version=version,
        deps=[up.web_pool],
        **ON_GPU,
        kinds={"pytorch", "diffusers"},
        description="The AutoencoderKL of the mini Stable Diffusion (image → 4× smaller latents), trained on the "
        "whole pool; scaling_factor set to 1/std of its latents as SD does.",
    )
    def vae(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        import torch
        from diffusers import AutoencoderKL

        from ..core.diffusion import pixel_batch, train_vae

        rows, skipped = _pool_rows(warehouse.get())
        paths = rows["path"].to_list()
        image_store.ensure(paths, context.log.info)
        final = image_store.path("models", "vae")
        made = install_shipped(context, profile, "vae", lineage, final)
        if made is None:
            model, log = train_vae(paths, world.diffusion, world.pool.image_size, progress=context.log.info)
            with atomic_folder(final) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
            made = {
                "source": "trained here",
                "losses": log.losses,
                "train_seconds": round(log.seconds, 1),
                "images_per_second": round(log.images_per_second, 1),
            }
        image_store.publish("models", "vae")
        model = AutoencoderKL.from_pretrained(final).eval()
        with torch.no_grad():
            originals = pixel_batch(paths[:16], world.pool.image_size)
            reconstructions = model.decode(model.encode(originals).latent_dist.mean).sample.clamp(-1, 1)
        mse = float(((reconstructions - originals) ** 2).mean())
        recon_dir = image_store.path("reports", "vae_reconstructions")
        rows = []
        for name, batch in (("original", originals), ("reconstruction", reconstructions)):
            row = []
            for i, tensor in enumerate(batch):
                path = recon_dir / f"{name}_{i:02d}.png"
                save_image_atomic(_to_pil(tensor), path)
                row.append(str(path))
            rows.append(row)
        image_store.publish("reports", "vae_reconstructions")
        return dg.MaterializeResult(
            metadata={
                "reconstruction_mse": mse,
                "training_images": len(paths),
                "skipped_pool_rows": skipped,
                "scaling_factor": float(model.config.scaling_factor),
                "parameters": sum(p.numel() for p in model.parameters()),
                "reconstructions": _grid_md(
                    rows, "originals (top) and reconstructions", image_store, "vae_reconstructions"
                ),
                **made,
            }
        )

    return vae


def unet_asset(profile: Profile, up: SimpleNamespace) -> dg.AssetsDefinition:
    world = profile.world

    version = code_version("2", world.diffusion.unet_training(), world.pool.image_size)
    lineage = defined_lineage("unet", version, [up.vae, up.clip_model, up.web_pool], vars(up).values())

    @dg.asset(
        metadata=outputs(files=("models/unet",)),
        group_name=GROUP,
        code_version=version,
        deps=[up.vae, up.clip_model, up.web_pool],
        **ON_GPU,
        kinds={"pytorch", "diffusers"},
        description="The UNet2DConditionModel of the mini Stable Diffusion, trained with SD's noise-prediction "
        "objective on VAE latents of pool images with aesthetic ≥ 5, conditioned on the frozen CLIP text tower.",
    )
    def unet(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPModel, CLIPTokenizer

        from ..core.diffusion import text_tower, train_unet

        pool, skipped = _pool_rows(warehouse.get(), min_aesthetic=world.diffusion.train_aesthetic_min)
        paths = pool["path"].to_list()
        final = image_store.path("models", "unet")
        made = install_shipped(context, profile, "unet", lineage, final)
        if made is None:
            vae_model = AutoencoderKL.from_pretrained(image_store.fetch("models", "vae")).eval()
            clip_folder = image_store.fetch("models", "clip")
            text_encoder = text_tower(CLIPModel.from_pretrained(clip_folder))
            tokenizer = CLIPTokenizer.from_pretrained(clip_folder)
            image_store.ensure(paths, context.log.info)
            model, log = train_unet(
                paths,
                pool["caption"].to_list(),
                vae_model,
                text_encoder,
                tokenizer,
                world.diffusion,
                world.pool.image_size,
                progress=context.log.info,
            )
            with atomic_folder(final) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
            made = {
                "source": "trained here",
                "losses": log.losses,
                "train_seconds": round(log.seconds, 1),
                "images_per_second": round(log.images_per_second, 1),
            }
        image_store.publish("models", "unet")
        parameters = sum(p.numel() for p in UNet2DConditionModel.from_pretrained(final).parameters())
        return dg.MaterializeResult(
            metadata={"training_images": len(paths), "skipped_pool_rows": skipped, "parameters": parameters, **made}
        )

    return unet


def diffusion_model_asset(profile: Profile, up: SimpleNamespace) -> dg.AssetsDefinition:
    world = profile.world

    @dg.asset(
        metadata=outputs(files=("models/stable_diffusion",)),
        group_name=GROUP,
        code_version=code_version("3", world.diffusion.scheduler),
        deps=[up.vae, up.unet, up.clip_model, up.pool_index],
        **ON_GPU,
        kinds={"diffusers"},
        description="The mini Stable Diffusion as a diffusers StableDiffusionPipeline folder (VAE, UNet, the CLIP "
        "text tower, scheduler, tokenizer, safety checker): loads with StableDiffusionPipeline and "
        "StableDiffusionImg2ImgPipeline.from_pretrained. The safety checker's NSFW concept and threshold are "
        "fitted on half of the pool's CLIP image embeddings; its precision and recall on the other half are reported.",
    )
    def diffusion_model(
        context: dg.AssetExecutionContext, image_store: ImageStoreResource, compute: ComputeResource
    ) -> dg.MaterializeResult:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPModel, CLIPProcessor

        from ..core.diffusion import (
            assemble_pipeline,
            fit_safety_checker,
            make_safety_checker,
            save_pipeline,
            text_tower,
        )

        models = image_store.path("models")
        for part in ("clip", "vae", "unet"):
            image_store.fetch("models", part)
        image_store.fetch("pool_index")
        clip = CLIPModel.from_pretrained(models / "clip").eval()
        processor = CLIPProcessor.from_pretrained(models / "clip")
        embeddings = np.concatenate([np.load(p) for p in embedding_shards(image_store.path("pool_index"))])
        flags = pl.read_parquet(image_store.path("pool_index", "metadata", "metadata_0.parquet"))["nsfw"].to_numpy()
        safety = fit_safety_checker(embeddings, flags)
        context.log.info(
            f"safety checker: threshold {safety.threshold:.3f}, held-out precision {safety.precision:.3f} "
            f"recall {safety.recall:.3f}"
        )
        pipeline = assemble_pipeline(
            AutoencoderKL.from_pretrained(models / "vae"),
            UNet2DConditionModel.from_pretrained(models / "unet"),
            text_tower(clip),
            processor.tokenizer,
            make_safety_checker(clip, safety.concept, safety.threshold),
            processor.image_processor,
            world.diffusion.scheduler,
        )
        save_pipeline(pipeline, models / "stable_diffusion")
        image_store.publish("models", "stable_diffusion")
        return dg.MaterializeResult(
            metadata={
                "folder": dg.MetadataValue.path(image_store.url("models", "stable_diffusion")),
                "safety_threshold": safety.threshold,
                "safety_precision_held_out": safety.precision,
                "safety_recall_held_out": safety.recall,
            }
        )

    return diffusion_model


def diffusion_fidelity_asset(profile: Profile, up: SimpleNamespace) -> dg.AssetsDefinition:
    world = profile.world

    @dg.asset(
        group_name=GROUP,
        code_version=code_version("1", world.diffusion.samples_per_class),
        deps=[up.diffusion_model, up.fidelity_judge, up.fidelity_classifier],
        **ON_GPU,
        kinds={"diffusers", "pytorch"},
        description="Simple-prompt samples of the mini Stable Diffusion (a grid, one row per class), loaded the way "
        "every generation stage loads it, and their class fidelity by the unbiased judge (relative to the judge's own "
        "accuracy on held-out web-domain images) beside their target-domain recognizability.",
    )
    def diffusion_fidelity(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        diffusion_backend: DiffusionBackendResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        from ..core.generation import classify_images, generate

        db = warehouse.get()
        models = image_store.path("models")
        for part in ("fidelity_classifier.safetensors", "fidelity_judge.safetensors"):
            image_store.fetch("models", part)
        pipeline = diffusion_backend.load("txt2img")
        catalog = db.query("SELECT label, wnid, name FROM class_catalog ORDER BY label")
        n = world.diffusion.samples_per_class
        prompts = [simple_prompt(name) for name in catalog["name"] for _ in range(n)]
        started = time.perf_counter()
        results = generate(
            pipeline,
            prompts,
            list(range(len(prompts))),
            diffusion_backend.steps,
            diffusion_backend.guidance_scale,
            diffusion_backend.batch_size,
        )
        seconds = time.perf_counter() - started
        sample_dir = image_store.path("reports", "diffusion_samples")
        rows = []
        for c in range(catalog.height):
            row = []
            for j in range(n):
                path = sample_dir / f"{catalog['wnid'][c]}_{j:02d}.png"
                save_image_atomic(results[c * n + j][0], path)
                row.append(str(path))
            rows.append(row)
        image_store.publish("reports", "diffusion_samples")
        # Scored over the samples the safety checker passed (flagged ones come back black).
        passed = np.array([not flagged for _, flagged in results])
        labels = np.repeat(catalog["label"].to_numpy(), n)[passed]
        kept = [image for (image, _), ok in zip(results, passed) if ok]
        judged = classify_images(
            load_checkpoint(models / "fidelity_judge.safetensors", "fidelity_judge"),
            profile.judge_classifier,
            catalog.height,
            kept,
        )
        recognized = classify_images(
            load_checkpoint(models / "fidelity_classifier.safetensors", "fidelity_classifier"),
            profile.classifier,
            catalog.height,
            kept,
        )
        judge_holdout = dict(db.query("SELECT label, holdout_web FROM judge_accuracy").iter_rows())
        score = sample_fidelity(catalog, labels, judged, recognized, judge_holdout)
        context.log.info(
            f"diffusion_fidelity: class fidelity {score.class_fidelity:.3f} by the judge ({score.relative:.2f} "
            f"of its own "
            f"{score.judge_accuracy:.3f} on held-out web-domain images), target-domain recognizability "
            f"{score.target_recognizability:.3f}, over {len(labels)} unflagged simple-prompt samples"
        )
        return dg.MaterializeResult(
            metadata={
                "safety_flagged_samples": int((~passed).sum()),
                "class_fidelity": score.class_fidelity,
                "judge_top1_holdout_web": score.judge_accuracy,
                "relative_class_fidelity": score.relative,
                "target_recognizability": score.target_recognizability,
                "class_fidelity_per_class": dg.MetadataValue.md(frame_markdown(score.per_class)),
                "sample_seconds": round(seconds, 2),
                "samples_per_second": round(len(results) / seconds, 2),
                "samples": _grid_md(rows, "simple-prompt samples, one row per class", image_store, "diffusion_samples"),
            }
        )

    return diffusion_fidelity


def _to_pil(tensor: "torch.Tensor"):
    from PIL import Image

    array = ((tensor.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB")


def external_foundation_assets(profile: Profile) -> list[dg.AssetSpec]:
    """Real scale: the pool, CLIP, its index and SD exist already; these specs keep the lineage."""
    pool = dg.AssetSpec(
        "web_pool",
        group_name=GROUP,
        description="External: the diffusion model's pre-training pool (LAION-5B / LAION-Aesthetics).",
    )
    clip = dg.AssetSpec(
        "clip_model",
        group_name=GROUP,
        deps=[pool],
        description=f"External: CLIP weights {profile.clip_weights}.",
        metadata={"weights": profile.clip_weights},
    )
    index = dg.AssetSpec(
        "pool_index",
        group_name=GROUP,
        deps=[clip, pool],
        description="External: the pool's CLIP KNN index (a clip-retrieval folder or back end).",
        metadata={"index_folder": profile.knn_index_folder, "url": profile.knn_url},
    )
    sd = dg.AssetSpec(
        "diffusion_model",
        group_name=GROUP,
        deps=[pool, clip],
        description=f"External: Stable Diffusion weights {profile.sd_weights}.",
        metadata={"weights": profile.sd_weights},
    )
    return [pool, clip, index, sd]


MINI_WORLD = (web_pool_asset, clip_model_asset, pool_index_asset, vae_asset, unet_asset, diffusion_model_asset)


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """The foundation for ``profile``: the mini world's assets (each builder sees the ones before it),
    or specs of external weights and index."""
    if not profile.world:
        return {spec.key.path[-1]: spec for spec in external_foundation_assets(profile)}
    built = {}
    for builder in MINI_WORLD:
        asset = builder(profile, SimpleNamespace(**vars(up), **built))
        built[asset.key.path[-1]] = asset
    return built


def build_fidelity(profile: Profile, up: SimpleNamespace) -> dict:
    """After the calibration stage (it needs the fidelity judge): the mini model's sample fidelity."""
    return {"diffusion_fidelity": diffusion_fidelity_asset(profile, up)} if profile.world else {}
