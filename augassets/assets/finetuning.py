"""Stage: fine-tuning for the personalized methods (paper §3.1) — ⑤ fine-tuned conditioning, ⑥ cluster
conditioning and ⑧ textual inversion keep the diffusion model frozen; ⑦ Imagic-style and ⑨ pseudo-word
+ DM fine-tune its UNet too.

⑤ ⑥ ⑧ run per class × method (``personalized_models``); ⑦ ⑨ run once per method over all classes,
since the UNet is shared (``personalized_unets``). Each run records its checkpoint candidates (best
val, best train, the first epochs); candidates.py makes their images and selection.py chooses one.

Why this module is long: the two fine-tuning assets share their settings, run folders and resumption,
and each records its runs, histories and a loss-curve figure; split further, those helpers would be
imported back from one place.
"""

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np
import polars as pl

from ..core.compute import record as record_compute
from ..core.compute import timed
from ..core.images import png_data_uri_markdown
from ..core.markdown import frame_markdown
from ..core.methods import (
    CLUSTER_CONDITIONING,
    CONDITIONING,
    CONDITIONING_UNET,
    FINETUNE_BUILDERS,
    JOINT_FINETUNE_BUILDERS,
    PER_CLASS_FINETUNE_BUILDERS,
    PSEUDO_WORD,
    WORD_BUILDERS,
    get_method,
    keys_with_builder,
)
from ..core.prompts import simple_prompt_nows
from ..core.selection import candidate_rank
from ..executors import ON_GPU
from ..integrity import outputs
from ..partitions import class_partitions, method_and_class, method_keys
from ..profiles import PersonalizationSpec, Profile
from ..resources import (
    ClipEncoderResource,
    ComputeResource,
    DiffusionBackendResource,
    ImageStoreResource,
    WarehouseResource,
)
from ..versions import code_version
from .partial import fail_partially

GROUP = "personalized"
CHECKPOINT_SCHEMA = {
    "method": pl.Utf8,
    "wnid": pl.Utf8,
    "cluster": pl.Int64,
    "cluster_size": pl.Int64,
    "candidate": pl.Utf8,
    "epoch": pl.Int64,
    "checkpoint": pl.Utf8,
    "word": pl.Utf8,
    "train_loss": pl.Float64,
    "val_loss": pl.Float64,
    "initial_val_loss": pl.Float64,
    "unet": pl.Utf8,  # ⑦ ⑨: the candidate's fine-tuned UNet (a save_pretrained folder); ⑤ ⑥ ⑧: none
}
HISTORY_SCHEMA = {
    "method": pl.Utf8,
    "wnid": pl.Utf8,
    "cluster": pl.Int64,
    "epoch": pl.Int64,
    "train_loss": pl.Float64,
    "val_loss": pl.Float64,
    "seconds": pl.Float64,
}


def finetune_spec(spec: PersonalizationSpec, builder: str):
    """The core loop's settings for one method."""
    from ..core.finetune import FinetuneSpec

    lr = spec.words_lr(joint=builder in JOINT_FINETUNE_BUILDERS) if builder in WORD_BUILDERS else spec.conditioning_lr
    imagic = builder == CONDITIONING_UNET
    if imagic and spec.max_epochs < spec.imagic_early_epochs:
        raise ValueError(
            f"⑦ Imagic keeps the checkpoints of its first {spec.imagic_early_epochs} epochs (the paper's 8) and does "
            f"not stop before them, but personalization.max_epochs is {spec.max_epochs}: raise max_epochs to at "
            f"least {spec.imagic_early_epochs} or lower personalization.imagic_early_epochs"
        )
    # ⑦: the first imagic_early_epochs epochs are its candidates, instead of the best train and val losses (the paper).
    return FinetuneSpec(
        max_epochs=spec.max_epochs,
        patience=spec.patience,
        batch_size=spec.batch_size,
        reference_batch_size=spec.reference_batch_size,
        lr=lr,
        val_draws=spec.val_draws,
        early_epochs=spec.imagic_early_epochs if imagic else spec.early_epochs,
        seed=spec.seed,
        loss_candidates=not imagic,
        min_epochs=spec.imagic_early_epochs if imagic else 0,
    )


def cluster_embedder(name: str, clip_encoder) -> Callable[[list[str]], np.ndarray]:
    """⑥'s image embedder by its setting (``PersonalizationSpec.cluster_embedder``): paths → L2-normalized
    embeddings."""
    from ..core.embedders import EMBEDDERS, inception_embeddings, inception_v3_pool

    if name == "clip":
        from ..core.clip import encode_image_batches

        model = clip_encoder.load()[0]
        size = model.config.vision_config.image_size
        return lambda paths: np.concatenate(list(encode_image_batches(model, paths, size)))
    if name in ("inception_v3", "inception_v3_untrained"):
        model = inception_v3_pool(pretrained=name == "inception_v3")
        return lambda paths: inception_embeddings(model, paths)
    raise ValueError(f"personalization.cluster_embedder {name!r}: one of {', '.join(EMBEDDERS)}")


def finetuned_method_keys(profile: Profile, builders: frozenset = FINETUNE_BUILDERS) -> list[str]:
    return list(keys_with_builder(builders, method_keys(profile)))


def run_folder(parent: Path, signature: dict) -> Path:
    """A fine-tuning run's folder under ``parent`` (a class's or a method's): named by its settings, so
    a run with other settings (another k, learning rate, weights) never touches the checkpoints that
    the recorded rows point at, and its own resume state waits for it in its own folder."""
    digest = hashlib.sha1(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return parent / f"run_{digest}"


def drop_other_runs(folder: Path, say) -> None:
    """Once ``folder``'s run is recorded: delete the other runs beside it (their rows are replaced),
    except those with a resume state (a run of other settings, stopped part-way, can still resume)."""
    for other in folder.parent.iterdir():
        if other != folder and not any(other.rglob("resume.pt")):
            if other.is_dir():
                shutil.rmtree(other)
            else:
                other.unlink()
            say(f"deleted {other.name}: checkpoints of an earlier run, no longer recorded")


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's assets for ``profile``; ``up``: the earlier stages' definitions by name."""
    assets = {}
    per_class_keys = finetuned_method_keys(profile, PER_CLASS_FINETUNE_BUILDERS)
    joint_keys = finetuned_method_keys(profile, JOINT_FINETUNE_BUILDERS)
    if per_class_keys:
        assets.update(_per_class_models(profile, up, per_class_keys))
    if joint_keys:
        assets.update(_joint_models(profile, up, joint_keys))
    return assets


def _multi(keys: list[str]) -> dg.MultiPartitionsDefinition:
    """Class × method partitions for ``keys``."""
    return dg.MultiPartitionsDefinition({"method": dg.StaticPartitionsDefinition(keys), "wnid": class_partitions})


def _per_class_models(profile: Profile, up: SimpleNamespace, keys: list[str]) -> dict:
    """⑤ ⑥ ⑧: a fine-tuning run per class × method."""
    spec = profile.personalization
    partitions = _multi(keys)
    # The per-class runs never read ⑨'s joint_word_lr: its version leaves it out.
    read = replace(spec, joint_word_lr=PersonalizationSpec.joint_word_lr)

    @dg.asset(
        metadata=outputs(rows="finetune_checkpoints", paths={"finetune_checkpoints": "checkpoint"}),
        group_name=GROUP,
        code_version=code_version("1", read, profile.dataset, profile.split),
        **ON_GPU,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[up.class_catalog, up.dataset_splits, up.diffusion_model, up.clip_model],
        kinds={"pytorch", "safetensors"},
        description="Per class × personalized method, the fine-tuned conditioning(s) or pseudo-word, trained with SD's "
        "noise-prediction loss on the class's target images (val loss on its val images; stop when it "
        "stagnates, at most "
        "max_epochs), the diffusion model frozen. ⑤ one text-encoder output initialized from the no-whitespace simple "
        "prompt; ⑥ one per k-means cluster of the target's image embeddings (cluster_embedder: Inception-v3 as "
        "the paper, the mini world's CLIP); ⑧ a pseudo-word's embedding in "
        "textual-inversion templates, initialized from the final word of the first lemma. Kept: the checkpoints "
        "with the "
        "best train and val loss and after the first epochs (safetensors; ⑧ loads with diffusers' "
        "load_textual_inversion). "
        "Resumes from its last finished epoch after a kill.",
    )
    def personalized_models(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        diffusion_backend: DiffusionBackendResource,
        clip_encoder: ClipEncoderResource,
        compute: ComputeResource,  # thread count and deterministic kernels
    ) -> dg.MaterializeResult:
        from ..core.figures import loss_curves
        from ..core.finetune import ClassImages, FinetuneError

        db = warehouse.get()
        catalog = {r["wnid"]: r for r in db.query("SELECT wnid, name, lemmas FROM class_catalog").iter_rows(named=True)}
        if profile.world:
            image_store.fetch("models", "stable_diffusion")
            image_store.fetch("models", "clip")
        pipeline = diffusion_backend.load("txt2img")
        image_size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
        embed_images = None  # ⑥'s cluster embedder, built on first use
        histories, summary, failures, started = [], [], {}, time.perf_counter()
        for key in context.partition_keys:
            method, wnid = method_and_class(key)
            builder = get_method(method).builder
            if wnid not in catalog:
                raise ValueError(f"class partition {wnid!r} is not in the class catalog: rematerialize class_catalog")
            split = {
                s: db.query("SELECT path FROM dataset_splits WHERE split = ? AND wnid = ? ORDER BY item", [s, wnid])[
                    "path"
                ].to_list()
                for s in ("target", "val")
            }
            image_store.ensure(split["target"] + split["val"], context.log.info)
            images = ClassImages(split["target"], split["val"], image_size)
            run_spec = finetune_spec(spec, builder)
            signature = {
                "method": method,
                "wnid": wnid,
                "spec": asdict(run_spec),
                "train": len(images.train),
                "val": len(images.val),
                "weights": diffusion_backend.weights,
            }
            folder = run_folder(
                image_store.path("personalized", method, wnid),
                {**signature, "k": spec.clusters} if builder == CLUSTER_CONDITIONING else signature,
            )
            say = lambda line, k=key: context.log.info(f"personalized_models[{k}] {line}")  # noqa: E731
            if builder == CLUSTER_CONDITIONING and embed_images is None:
                embed_images = cluster_embedder(spec.cluster_embedder, clip_encoder)
            try:
                runs = _finetune(
                    builder, pipeline, catalog[wnid], images, run_spec, folder, signature, embed_images, say
                )
            except (FinetuneError, ValueError, OSError) as error:
                failures[str(key)] = str(error)
                context.log.error(f"personalized_models[{key}] failed: {error}")
                continue
            rows, history = [], []
            for cluster, (result, size) in enumerate(runs):
                by_epoch = {h["epoch"]: h for h in result.history}
                for label, epoch in sorted(result.candidates.items(), key=lambda item: candidate_rank(item[0])):
                    rows.append(
                        {
                            "method": method,
                            "wnid": wnid,
                            "cluster": cluster,
                            "cluster_size": size,
                            "candidate": label,
                            "epoch": epoch,
                            "checkpoint": str(result.folder / f"epoch_{epoch:03d}.safetensors"),
                            "word": result.extra.get("word"),
                            "train_loss": by_epoch[epoch]["train_loss"],
                            "val_loss": by_epoch[epoch]["val_loss"],
                            "initial_val_loss": result.extra.get("initial_val_loss"),
                        }
                    )
                history += [{"method": method, "wnid": wnid, "cluster": cluster, **h} for h in result.history]
            db.replace(
                "finetune_checkpoints",
                pl.DataFrame(rows, schema=CHECKPOINT_SCHEMA),
                where={"method": method, "wnid": wnid},
            )
            db.replace(
                "finetune_history", pl.DataFrame(history, schema=HISTORY_SCHEMA), where={"method": method, "wnid": wnid}
            )
            for (
                result,
                _,
            ) in runs:  # recorded: a later materialization starts over instead of resuming this finished run
                (result.folder / "resume.pt").unlink(missing_ok=True)
            drop_other_runs(folder, say)
            histories += history
            seconds = sum(r.seconds for r, _ in runs)
            record_compute(
                db,
                [
                    timed(
                        "personalized_models",
                        str(key),
                        "fine-tune",
                        method,
                        diffusion_backend.device,
                        seconds,
                        sum(r.images_per_second * r.seconds for r, _ in runs),
                    )
                ],
            )
            summary.append(
                {
                    "method": method,
                    "wnid": wnid,
                    "runs": len(runs),
                    "epochs": sum(len(r.history) for r, _ in runs),
                    "stopped_early": all(r.stopped_early for r, _ in runs),
                    "best_val_epoch": ",".join(str(r.best_val_epoch) for r, _ in runs),
                    "seconds": round(seconds, 1),
                    "images_per_second": round(sum(r.images_per_second * r.seconds for r, _ in runs) / seconds, 1)
                    if seconds
                    else 0.0,
                    "resumed_from_epoch": max(r.resumed_from for r, _ in runs),
                }
            )
            context.log.info(
                f"personalized_models[{key}]: {summary[-1]['epochs']} epochs in {seconds:.1f} s, best val at epoch(s) "
                f"{summary[-1]['best_val_epoch']}"
            )
        if failures:
            finished = {dg.MultiPartitionKey({"method": row["method"], "wnid": row["wnid"]}): {} for row in summary}
            fail_partially(context, finished, failures, noun="fine-tuning runs")
        table = pl.DataFrame(summary)
        metadata = {
            "runs": table.height,
            "seconds": round(time.perf_counter() - started, 1),
            "train_seconds": float(table["seconds"].sum()),
            "device": diffusion_backend.device,
            "per_run": dg.MetadataValue.md(frame_markdown(table)),
        }
        try:
            curves = pl.DataFrame(histories, schema=HISTORY_SCHEMA).with_columns(
                pl.format("{} {} c{}", "method", "wnid", "cluster").alias("run")
            )
            metadata["loss_curves"] = dg.MetadataValue.md(
                png_data_uri_markdown(loss_curves(curves, "personalization: SD loss per epoch"), "loss curves")
            )
        except Exception as error:  # a figure is an extra: the runs are recorded either way
            context.log.warning(f"personalized_models: the loss-curve figure failed to draw: {error}")
        return dg.MaterializeResult(metadata=metadata)

    def _finetune(builder, pipeline, row, images, run_spec, folder, signature, embed, say) -> list[tuple]:
        """One class's fine-tuning for ``builder``: [(result, training images)] per run (⑥: per cluster)."""
        from ..core import finetune as ft
        from ..core.prompts import textual_inversion_templates

        prompt = simple_prompt_nows(row["name"])
        if builder == CONDITIONING:
            result = ft.finetune_conditioning(pipeline, prompt, images, run_spec, folder, signature, progress=say)
            return [(result, len(images.train))]
        if builder == CLUSTER_CONDITIONING:
            results = ft.finetune_cluster_conditionings(
                pipeline,
                prompt,
                images,
                embed(images.train),
                embed(images.val),
                spec.clusters,
                run_spec,
                folder,
                {**signature, "k": spec.clusters},
                progress=say,
            )
            return [(r, r.extra["size"]) for r in results]
        if builder == PSEUDO_WORD:
            result = ft.finetune_textual_inversion(
                pipeline,
                row["wnid"],
                row["lemmas"][0],
                textual_inversion_templates(),
                images,
                run_spec,
                folder,
                signature,
                progress=say,
            )
            return [(result, len(images.train))]
        raise ValueError(f"no fine-tuning for builder {builder!r}")

    return {"personalized_models": personalized_models}


def _joint_models(profile: Profile, up: SimpleNamespace, keys: list[str]) -> dict:
    """⑦ ⑨: one fine-tuning run per method over all classes (the UNet is shared)."""
    spec = profile.personalization
    methods = dg.StaticPartitionsDefinition(keys)

    @dg.asset(
        metadata=outputs(rows="finetune_checkpoints", paths={"finetune_checkpoints": "checkpoint"}),
        group_name=GROUP,
        code_version=code_version("2", spec, profile.dataset, profile.split),
        **ON_GPU,
        partitions_def=methods,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[up.class_catalog, up.dataset_splits, up.diffusion_model],
        kinds={"pytorch", "diffusers", "safetensors"},
        description="Per personalized method that fine-tunes the diffusion model, one run over every class's "
        "target images "
        "(SD's noise-prediction loss; val loss on the val images; stop when it stagnates, at most max_epochs), "
        "training the "
        "UNet, which all classes share, together with ⑦ one conditioning per class (initialized from its "
        "no-whitespace simple "
        "prompt) or ⑨ one pseudo-word per class in textual-inversion templates. Kept: ⑨ best train, best val "
        "and the first "
        "early_epochs; ⑦ the first imagic_early_epochs instead (the paper's 8; no early stop before them), each "
        "as epoch_<n>/unet (save_pretrained) and epoch_<n>/<wnid>.safetensors "
        "(⑦ prompt_embeds; ⑨ loads with diffusers' load_textual_inversion). A new class retrains it. Resumes "
        "after a kill.",
    )
    def personalized_unets(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        diffusion_backend: DiffusionBackendResource,
        compute: ComputeResource,  # thread count and deterministic kernels
    ) -> dg.MaterializeResult:
        from ..core import finetune as ft
        from ..core.figures import loss_curves
        from ..core.prompts import textual_inversion_templates

        db = warehouse.get()
        catalog = db.query("SELECT wnid, name, lemmas FROM class_catalog ORDER BY label")
        if profile.world:
            image_store.fetch("models", "stable_diffusion")
        histories, summary, failures, started = [], [], {}, time.perf_counter()
        for method in context.partition_keys:
            builder = get_method(method).builder
            pipeline = diffusion_backend.load("txt2img")  # a fresh one per method: the run trains its UNet in place
            image_size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
            classes = []
            for row in catalog.iter_rows(named=True):
                split = {
                    s: db.query(
                        "SELECT path FROM dataset_splits WHERE split = ? AND wnid = ? ORDER BY item", [s, row["wnid"]]
                    )["path"].to_list()
                    for s in ("target", "val")
                }
                image_store.ensure(split["target"] + split["val"], context.log.info)
                classes.append(
                    ft.JointClass(
                        row["wnid"],
                        simple_prompt_nows(row["name"]),
                        row["lemmas"][0],
                        ft.ClassImages(split["target"], split["val"], image_size),
                    )
                )
            run_spec = finetune_spec(spec, builder)
            signature = {
                "method": method,
                "classes": [c.wnid for c in classes],
                "spec": asdict(run_spec),
                "unet_lr": spec.unet_lr,
                "train": sum(len(c.images.train) for c in classes),
                "val": sum(len(c.images.val) for c in classes),
                "weights": diffusion_backend.weights,
            }
            folder = run_folder(image_store.path("personalized", method), signature)
            templates = textual_inversion_templates() if builder in WORD_BUILDERS else None
            say = lambda line, m=method: context.log.info(f"personalized_unets[{m}] {line}")  # noqa: E731
            try:
                result = ft.finetune_jointly(
                    pipeline,
                    classes,
                    run_spec,
                    spec.unet_lr,
                    folder,
                    signature,
                    templates,
                    progress=say,
                    latents_max_bytes=int(spec.latents_in_memory_gib * 2**30),
                )
                exported = ft.export_joint_checkpoints(result, pipeline, [c.wnid for c in classes])
            except (ft.FinetuneError, ValueError, OSError) as error:
                failures[method] = str(error)
                context.log.error(f"personalized_unets[{method}] failed: {error}")
                continue
            by_epoch, words = {h["epoch"]: h for h in result.history}, result.extra["words"]
            rows = [
                {
                    "method": method,
                    "wnid": c.wnid,
                    "cluster": 0,
                    "cluster_size": len(c.images.train),
                    "candidate": label,
                    "epoch": epoch,
                    "checkpoint": str(exported[epoch] / f"{c.wnid}.safetensors"),
                    "word": words.get(c.wnid),
                    "train_loss": by_epoch[epoch]["train_loss"],
                    "val_loss": by_epoch[epoch]["val_loss"],
                    "initial_val_loss": None,
                    "unet": str(exported[epoch] / "unet"),
                }
                for c in classes
                for label, epoch in sorted(result.candidates.items(), key=lambda item: candidate_rank(item[0]))
            ]
            history = [{"method": method, "wnid": None, "cluster": 0, **h} for h in result.history]
            db.replace("finetune_checkpoints", pl.DataFrame(rows, schema=CHECKPOINT_SCHEMA), where={"method": method})
            db.replace("finetune_history", pl.DataFrame(history, schema=HISTORY_SCHEMA), where={"method": method})
            (folder / ft.RESUME_FILE).unlink(missing_ok=True)  # recorded: a later materialization starts over
            drop_other_runs(folder, say)
            image_store.publish("personalized", method)
            histories += history
            record_compute(
                db,
                [
                    timed(
                        "personalized_unets",
                        method,
                        "fine-tune",
                        method,
                        diffusion_backend.device,
                        result.seconds,
                        result.images_per_second * result.seconds,
                    )
                ],
            )
            summary.append(
                {
                    "method": method,
                    "classes": len(classes),
                    "epochs": len(result.history),
                    "stopped_early": result.stopped_early,
                    "best_val_epoch": result.best_val_epoch,
                    "kept_epochs": ",".join(map(str, sorted(exported))),
                    "seconds": round(result.seconds, 1),
                    "images_per_second": round(result.images_per_second, 1),
                    "resumed_from_epoch": result.resumed_from,
                    "unet_parameters": sum(t.numel() for t in pipeline.unet.parameters()),
                }
            )
            context.log.info(
                f"personalized_unets[{method}]: {len(result.history)} epochs over {len(classes)} classes in "
                f"{result.seconds:.1f} s, best val at epoch {result.best_val_epoch}"
            )
        if failures:
            fail_partially(context, {row["method"]: {} for row in summary}, failures, noun="fine-tuning runs")
        table = pl.DataFrame(summary)
        metadata = {
            "runs": table.height,
            "seconds": round(time.perf_counter() - started, 1),
            "train_seconds": float(table["seconds"].sum()),
            "device": diffusion_backend.device,
            "per_run": dg.MetadataValue.md(frame_markdown(table)),
        }
        try:
            curves = pl.DataFrame(histories, schema=HISTORY_SCHEMA).with_columns(pl.col("method").alias("run"))
            metadata["loss_curves"] = dg.MetadataValue.md(
                png_data_uri_markdown(loss_curves(curves, "UNet fine-tuning: SD loss per epoch"), "loss curves")
            )
        except Exception as error:  # a figure is an extra: the runs are recorded either way
            context.log.warning(f"personalized_unets: the loss-curve figure failed to draw: {error}")
        return dg.MaterializeResult(metadata=metadata)

    return {"personalized_unets": personalized_unets}
