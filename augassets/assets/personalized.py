"""Stage: the personalized methods (paper §3.1) — ⑤ fine-tuned conditioning, ⑥ cluster conditioning
and ⑧ textual inversion, which keep the diffusion model frozen, and ⑦ Imagic-style and ⑨ pseudo-word
+ DM, which fine-tune its UNet too.

⑤ ⑥ ⑧, per class × method: a fine-tuning run and its checkpoint candidates (``personalized_models``),
then each candidate's images (``candidate_images``). ⑦ ⑨, per method: one run over all classes, since
the UNet is shared (``personalized_unets``), then per class × method each candidate's images
(``unet_candidate_images``). Per method, across its classes: one classifier per candidate label on
target ∪ that candidate's images, and the best val accuracy chooses the label
(``checkpoint_selection``); ``augmentation_images`` then takes the chosen candidate's images, so
everything downstream (duplicates, fidelity, datasets, classifiers) sees one set per method.
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

from ..core.augment import augmented_sets, training_order
from ..core.compute import Meter, timed
from ..core.compute import record as record_compute
from ..core.files import with_file_facts, write_parquet_atomic
from ..core.images import image_grid, png_data_uri_markdown
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
from ..core.report import frame_markdown
from ..integrity import outputs
from ..partitions import class_partitions, method_and_class, method_keys, same_class_of
from ..profiles import PersonalizationSpec, Profile
from ..resources import (
    ClipEncoderResource,
    ComputeResource,
    DiffusionBackendResource,
    ImageStoreResource,
    WarehouseResource,
)
from ..scale import ON_GPU
from ..tags import CHUNK_BY_TAG
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
CANDIDATE_MANIFEST_SCHEMA = {
    "method": pl.Utf8,
    "wnid": pl.Utf8,
    "candidate": pl.Utf8,
    "epochs": pl.Utf8,
    "rank": pl.Int64,
    "path": pl.Utf8,
    "prompt": pl.Utf8,
    "family": pl.Utf8,
    "cluster": pl.Int64,
    "seed": pl.Int64,
    "attempts": pl.Int64,
    "checkpoint": pl.Utf8,
}
SELECTION_SCHEMA = {
    "method": pl.Utf8,
    "candidate": pl.Utf8,
    "val_top1": pl.Float64,
    "best_epoch": pl.Int64,
    "epochs_run": pl.Int64,
    "train_images": pl.Int64,
    "train_seconds": pl.Float64,
    "same_images_as": pl.Utf8,
    "chosen": pl.Boolean,
}


def finetune_spec(spec: PersonalizationSpec, builder: str):
    """The core loop's settings for one method."""
    from ..core.finetune import FinetuneSpec

    lr = spec.word_lr if builder in WORD_BUILDERS else spec.conditioning_lr
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


def candidate_rank(label: str) -> int:
    """The order candidates are listed (and ties of val accuracy broken) in: best val, best train, epoch 1, 2 …"""
    ranks = {"best_val": 0, "best_train": 1}
    return ranks[label] if label in ranks else 1 + int(label.removeprefix("epoch_"))


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


def _set_folder(epochs: tuple[int, ...]) -> str:
    """The folder of one candidate image set: its checkpoint epoch (one per cluster)."""
    return "epochs_" + "-".join(f"{e:03d}" for e in epochs)


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's assets for ``profile``; ``up``: the earlier stages' definitions by name."""
    keys = finetuned_method_keys(profile)
    if not keys:
        return {}
    per_class_keys = finetuned_method_keys(profile, PER_CLASS_FINETUNE_BUILDERS)
    joint_keys = finetuned_method_keys(profile, JOINT_FINETUNE_BUILDERS)
    assets = {}
    if per_class_keys:
        assets.update(_per_class_assets(profile, up, per_class_keys))
    if joint_keys:
        assets.update(_joint_assets(profile, up, joint_keys))
    candidates = [
        (assets[name], names)
        for name, names in (("candidate_images", per_class_keys), ("unet_candidate_images", joint_keys))
        if names
    ]
    assets["checkpoint_selection"] = _selection_asset(profile, up, keys, candidates)
    return assets


def _multi(keys: list[str]) -> dg.MultiPartitionsDefinition:
    """Class × method partitions for ``keys``."""
    return dg.MultiPartitionsDefinition({"method": dg.StaticPartitionsDefinition(keys), "wnid": class_partitions})


def _per_class_assets(profile: Profile, up: SimpleNamespace, keys: list[str]) -> dict:
    """⑤ ⑥ ⑧: fine-tuning and candidates per class × method."""
    spec = profile.personalization
    partitions = _multi(keys)

    @dg.asset(
        metadata=outputs(rows="finetune_checkpoints", paths={"finetune_checkpoints": "checkpoint"}),
        group_name=GROUP,
        code_version=code_version("1", spec, profile.dataset, profile.split),
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

    @dg.asset(
        metadata=outputs(rows="candidate_manifest", paths={"candidate_manifest": "path"}),
        group_name=GROUP,
        code_version=code_version("1", profile.generation),
        **ON_GPU,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[personalized_models, dg.AssetDep(up.class_prompts, partition_mapping=same_class_of(keys))],
        kinds={"pytorch", "parquet"},
        description="Per class × personalized method, the images of every checkpoint candidate (best val, best train, "
        "first epochs): the class's prompts (⑧: its templates with the pseudo-word) through the fine-tuned "
        "conditionings as prompt_embeds, with the same seeds for every candidate (so candidates differ only by their "
        "checkpoint); ⑥ draws clusters in proportion to their sizes. Seeded, resumable, safety-checked like the prompt "
        "methods; candidates that share checkpoints share their images.",
    )
    def candidate_images(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        diffusion_backend: DiffusionBackendResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        return _make_candidates(profile, context, warehouse, image_store, diffusion_backend)

    return {"personalized_models": personalized_models, "candidate_images": candidate_images}


def _joint_assets(profile: Profile, up: SimpleNamespace, keys: list[str]) -> dict:
    """⑦ ⑨: one fine-tuning run per method over all classes (the UNet is shared), candidates per class × method."""
    spec = profile.personalization
    methods = dg.StaticPartitionsDefinition(keys)
    partitions = dg.MultiPartitionsDefinition({"method": methods, "wnid": class_partitions})

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
                    pipeline, classes, run_spec, spec.unet_lr, folder, signature, templates, progress=say
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

    @dg.asset(
        metadata=outputs(rows="candidate_manifest", paths={"candidate_manifest": "path"}),
        group_name=GROUP,
        code_version=code_version("1", profile.generation),
        **ON_GPU,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[
            dg.AssetDep(
                personalized_unets,
                partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="method"),
            ),
            dg.AssetDep(up.class_prompts, partition_mapping=same_class_of(keys)),
        ],
        kinds={"pytorch", "parquet"},
        description="Per class × method (⑦ ⑨), the images of every checkpoint candidate of the method's "
        "fine-tuned UNet: the "
        "class's prompts through the candidate's UNet and the class's conditioning (⑦, as prompt_embeds) or "
        "pseudo-word in "
        "its templates (⑨), with the same seeds for every candidate. Seeded, resumable, safety-checked like the prompt "
        "methods; candidates that share a checkpoint share their images.",
    )
    def unet_candidate_images(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        diffusion_backend: DiffusionBackendResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        return _make_candidates(profile, context, warehouse, image_store, diffusion_backend)

    return {"personalized_unets": personalized_unets, "unet_candidate_images": unet_candidate_images}


def _selection_asset(
    profile: Profile, up: SimpleNamespace, keys: list[str], candidates: list[tuple]
) -> dg.AssetsDefinition:
    """Checkpoint selection over every fine-tuned method's candidates (``candidates``: (asset, its methods))."""
    partitions = _multi(keys)

    @dg.asset(
        metadata=outputs(rows="checkpoint_selection", tables=("checkpoint_scores",)),
        group_name=GROUP,
        code_version=code_version("3", profile.classifier, profile.split.seed, profile.generation.seed),
        **ON_GPU,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        tags={
            CHUNK_BY_TAG: "method"
        },  # its classifiers are per method (every class at once): worker chunks hold whole methods
        deps=[
            *(
                dg.AssetDep(
                    asset,
                    partition_mapping=dg.MultiPartitionMapping(
                        {
                            "method": dg.DimensionPartitionMapping(
                                "method", dg.StaticPartitionMapping({m: m for m in methods})
                            ),
                            "wnid": dg.DimensionPartitionMapping("wnid", dg.AllPartitionMapping()),
                        }
                    ),
                )
                for asset, methods in candidates
            ),
            up.dataset_splits,
        ],
        kinds={"pytorch", "parquet"},
        description="Which checkpoint each personalized method uses (paper §3.1): per method, one classifier "
        "per candidate "
        "label (best val, best train, first epochs) trained on the target plus that candidate's images of every class, "
        "drawn like the method's replicate sets; the label with the highest VALIDATION top-1 is chosen (ties: "
        "the order "
        "listed); only the chosen one's images go on to the test-scored classifiers. Per class × method, the chosen "
        "checkpoint(s); the candidates' val accuracies are the checkpoint_scores table. (Classes retrieval cannot fill "
        "are still in these selection runs: the exclusion is decided downstream of the images.)",
    )
    def checkpoint_selection(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        from ..core.classifier import LabeledImages, train_classifier

        db = warehouse.get()
        classifier_spec = replace(profile.classifier, device=compute.device)
        classes = db.query("SELECT count(*) AS n FROM class_catalog")["n"][0]
        splits = db.query("SELECT * FROM dataset_splits")
        val = splits.filter(pl.col("split") == "val").sort("label", "item")
        image_store.ensure(val["path"], context.log.info)
        val_images = LabeledImages(val["path"].to_list(), val["label"].to_list())
        labels = dict(db.query("SELECT wnid, label FROM class_catalog").iter_rows())
        scores_all, lines = [], []
        for method in sorted({method_and_class(k)[0] for k in context.partition_keys}, key=keys.index):
            manifest = db.query("SELECT * FROM candidate_manifest WHERE method = ?", [method]).with_columns(
                pl.col("wnid").replace_strict(labels, return_dtype=pl.Int64).alias("label")
            )
            image_store.ensure(manifest["path"].unique(), context.log.info)
            rows = []
            trained: dict[tuple, dict] = {}  # a label whose images are another's, class for class, reuses its run
            for label in sorted(manifest["candidate"].unique().to_list(), key=candidate_rank):
                images = manifest.filter(pl.col("candidate") == label).select("wnid", "label", "path", "rank")
                same = tuple(sorted(images["path"].to_list()))
                if same not in trained:
                    train = training_order(
                        augmented_sets(get_method(method), splits, 1, images=images, seed=profile.generation.seed)
                    )
                    result = train_classifier(
                        LabeledImages(train["path"].to_list(), train["label"].to_list()),
                        val_images,
                        None,
                        classes,
                        classifier_spec,
                        seed=profile.split.seed * 1000,
                        progress=lambda line, m=method, c=label: context.log.debug(f"selection[{m}, {c}] {line}"),
                    )
                    trained[same] = {
                        "val_top1": result.best_val_top1,
                        "best_epoch": result.best_epoch,
                        "epochs_run": result.epochs_run,
                        "train_images": result.train_images,
                        "train_seconds": result.train_seconds,
                        "same_images_as": label,
                    }
                run = trained[same]
                rows.append({"method": method, "candidate": label, **run})
                shared = "" if run["same_images_as"] == label else f" (the images of {run['same_images_as']}: one run)"
                context.log.info(
                    f"checkpoint_selection[{method}]: candidate {label}: val top-1 {run['val_top1']:.4f}{shared}"
                )
            record_compute(
                db,
                [
                    timed(
                        "checkpoint_selection",
                        method,
                        "select checkpoint",
                        method,
                        compute.device,
                        sum(r["train_seconds"] for r in trained.values()),
                        sum(r["train_images"] * r["epochs_run"] for r in trained.values()),
                    )
                ],
            )
            best = max(rows, key=lambda r: (r["val_top1"], -candidate_rank(r["candidate"])))
            scores = pl.DataFrame([{**r, "chosen": r is best} for r in rows], schema=SELECTION_SCHEMA)
            db.replace("checkpoint_scores", scores, where={"method": method})
            scores_all.append(scores)
            chosen = manifest.filter(pl.col("candidate") == best["candidate"])
            lines.append(
                f"- `{method}`: **{best['candidate']}** (val top-1 {best['val_top1']:.4f} of {len(rows)} candidates)"
            )
            for key in context.partition_keys:
                key_method, wnid = method_and_class(key)
                if key_method != method:
                    continue
                part = chosen.filter(pl.col("wnid") == wnid)
                if part.is_empty():
                    raise ValueError(
                        f"checkpoint_selection[{key}]: candidate {best['candidate']} has no images of class {wnid}: "
                        "rematerialize candidate_images for it"
                    )
                checkpoints = (
                    part.group_by("cluster").agg(pl.col("checkpoint").first(), pl.col("epochs").first()).sort("cluster")
                )
                db.replace(
                    "checkpoint_selection",
                    pl.DataFrame(
                        {
                            "method": [method] * checkpoints.height,
                            "wnid": [wnid] * checkpoints.height,
                            "candidate": [best["candidate"]] * checkpoints.height,
                            "cluster": checkpoints["cluster"],
                            "checkpoint": checkpoints["checkpoint"],
                            "val_top1": [best["val_top1"]] * checkpoints.height,
                        }
                    ),
                    where={"method": method, "wnid": wnid},
                )
        table = pl.concat(scores_all)
        return dg.MaterializeResult(
            metadata={
                "chosen": dg.MetadataValue.md("\n".join(lines)),
                "candidates": dg.MetadataValue.md(frame_markdown(table)),
                "classifiers_trained": int((table["same_images_as"] == table["candidate"]).sum()),
                "train_seconds": float(
                    table.filter(pl.col("same_images_as") == pl.col("candidate"))["train_seconds"].sum()
                ),
            }
        )

    return checkpoint_selection


def _make_candidates(
    profile: Profile,
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    image_store: ImageStoreResource,
    diffusion_backend: DiffusionBackendResource,
) -> dg.MaterializeResult:
    """Each checkpoint candidate's images for the run's class × method partitions (candidate_images,
    unet_candidate_images): the same seeds for every candidate, one image set per distinct checkpoint."""
    from ..core.finetune import draw_clusters
    from ..core.generation import GenerationRequest, generate_partition

    db = warehouse.get()
    if profile.world:
        image_store.fetch("models", "stable_diffusion")
    pipeline = diffusion_backend.load("txt2img")
    summary, grids, started = [], [], time.perf_counter()
    for key in context.partition_keys:
        method, wnid = method_and_class(key)
        meter = Meter(
            context.asset_key.to_user_string(), str(key), "generate candidates", method, diffusion_backend.device
        ).start()
        checkpoints = db.query(
            "SELECT * FROM finetune_checkpoints WHERE method = ? AND wnid = ? ORDER BY cluster", [method, wnid]
        )
        prompts = db.query(
            "SELECT prompt, family FROM class_prompts WHERE method = ? AND wnid = ? ORDER BY prompt_index",
            [method, wnid],
        )
        if checkpoints.is_empty() or prompts.is_empty():
            trained_by = (
                "personalized_unets" if get_method(method).builder in JOINT_FINETUNE_BUILDERS else "personalized_models"
            )
            raise ValueError(
                f"{context.asset_key.to_user_string()}[{key}]: no checkpoints or prompts: materialize {trained_by} and "
                "class_prompts for it first"
            )
        image_store.ensure(checkpoints["checkpoint"].unique(), context.log.info)
        sizes = checkpoints.unique("cluster").sort("cluster")["cluster_size"].to_list()
        clusters = draw_clusters(sizes, prompts.height)
        # Candidates whose checkpoints coincide (e.g. best val = epoch 3) share one image set.
        groups: dict[tuple, list[str]] = {}
        for label in sorted(checkpoints["candidate"].unique().to_list(), key=candidate_rank):
            epochs = tuple(checkpoints.filter(pl.col("candidate") == label).sort("cluster")["epoch"].to_list())
            groups.setdefault(epochs, []).append(label)
        root = image_store.path("candidates", method, wnid)
        rows = []
        for epochs, labels in groups.items():
            folder_name = _set_folder(epochs)
            chosen = checkpoints.filter(pl.col("candidate") == labels[0]).sort("cluster")
            if chosen["unet"][0] is not None:  # ⑦ ⑨: this candidate's fine-tuned UNet
                pipeline.unet = _load_unet(image_store, chosen["unet"][0], pipeline)
            texts, states = _conditionings(pipeline, method, chosen, prompts, clusters)
            request = GenerationRequest(
                method,
                wnid,
                texts,
                prompts["family"].to_list(),
                base_seed=profile.generation.seed,
                conditionings=states,
            )
            records = generate_partition(
                pipeline,
                request,
                root / folder_name,
                diffusion_backend.steps,
                diffusion_backend.guidance_scale,
                diffusion_backend.batch_size,
                profile.generation.max_attempts,
                progress=lambda line, f=folder_name: context.log.debug(f"candidate {f} {line}"),
            )
            for label in labels:
                rows += [
                    {
                        "method": method,
                        "wnid": wnid,
                        "candidate": label,
                        "epochs": ",".join(map(str, epochs)),
                        "rank": r["index"],
                        "path": r["path"],
                        "prompt": r["prompt"],
                        "family": r["family"],
                        "cluster": clusters[r["index"]],
                        "seed": r["seed"],
                        "attempts": r["attempts"],
                        "checkpoint": chosen["checkpoint"][clusters[r["index"]]],
                    }
                    for r in records
                ]
            grids.append([r["path"] for r in records[:8]])
            context.log.info(
                f"{context.asset_key.to_user_string()}[{key}]: {len(records)} images for {', '.join(labels)} "
                f"(epoch {'/'.join(map(str, epochs))})"
            )
        manifest = pl.DataFrame(rows, schema=CANDIDATE_MANIFEST_SCHEMA)
        in_use = {_set_folder(epochs) for epochs in groups}
        for old in root.iterdir():  # sets of an earlier materialization's candidates
            if old.is_dir() and old.name not in in_use and not old.name.endswith(".partial"):
                shutil.rmtree(old)
        write_parquet_atomic(manifest, root / "manifest.parquet")
        image_store.publish("candidates", method, wnid)
        db.replace("candidate_manifest", with_file_facts(manifest), where={"method": method, "wnid": wnid})
        meter.stop()
        meter.images = manifest["path"].n_unique()
        record_compute(db, [meter])
        summary.append(
            {
                "method": method,
                "wnid": wnid,
                "candidates": len(manifest["candidate"].unique()),
                "image_sets": len(groups),
                "images": manifest["path"].n_unique(),
                "regenerated": int((manifest.unique("path")["attempts"] - 1).sum()),
            }
        )
    table = pl.DataFrame(summary)
    return dg.MaterializeResult(
        metadata={
            "partitions": table.height,
            "images_generated": int(table["images"].sum()),
            "seconds": round(time.perf_counter() - started, 1),
            "per_partition": dg.MetadataValue.md(frame_markdown(table)),
            "sample_grid": dg.MetadataValue.md(
                "First 8 of each candidate set:\n\n" + png_data_uri_markdown(image_grid(grids[:20]), "candidate images")
            ),
        }
    )


def _load_unet(image_store: ImageStoreResource, folder: str, pipeline):
    """A fine-tuned UNet (``save_pretrained`` folder in the image store), on the pipeline's device and dtype."""
    from pathlib import Path

    from diffusers import UNet2DConditionModel

    path = Path(folder)
    image_store.fetch(*path.relative_to(image_store.path()).parts)
    return UNet2DConditionModel.from_pretrained(path).to(pipeline.device, pipeline.unet.dtype).eval()


def _conditionings(pipeline, method: str, checkpoints: pl.DataFrame, prompts: pl.DataFrame, clusters: list[int]):
    """Per image: what its conditioning stands for (recorded as its prompt) and its text-encoder
    states, from one candidate's checkpoint(s) (``checkpoints``: one row per cluster)."""
    import torch
    from safetensors.torch import load_file

    from ..core.finetune import WordEncoder

    builder = get_method(method).builder
    loaded = [load_file(path) for path in checkpoints["checkpoint"]]
    if builder in (CONDITIONING, CLUSTER_CONDITIONING, CONDITIONING_UNET):
        states = [loaded[c]["prompt_embeds"] for c in clusters]
        what = [
            f"[fine-tuned conditioning{f' {c}' if builder == CLUSTER_CONDITIONING else ''} from] {p}"
            for c, p in zip(clusters, prompts["prompt"])
        ]
        return what, states
    word = checkpoints["word"][0]
    encoder = WordEncoder(pipeline, word)
    texts = [template.format(word) for template in prompts["prompt"]]
    with torch.no_grad():
        encoded = torch.cat([encoder(texts[i : i + 64], loaded[0][word]) for i in range(0, len(texts), 64)])
    return texts, list(encoded.split(1))
