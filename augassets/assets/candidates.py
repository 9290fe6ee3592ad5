"""Stage: the images of every checkpoint candidate of the personalized methods (paper §3.1), per class ×
method: the class's prompts through the candidate's fine-tuned conditioning (⑤ ⑥ ⑧, ``candidate_images``)
or UNet (⑦ ⑨, ``unet_candidate_images``), with the same seeds for every candidate, so candidates differ
only by their checkpoint. selection.py then chooses one candidate per method.
"""

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import polars as pl

from ..core.compute import Meter
from ..core.compute import record as record_compute
from ..core.files import with_file_facts, write_parquet_atomic
from ..core.images import image_grid, png_data_uri_markdown
from ..core.markdown import frame_markdown
from ..core.methods import (
    CLUSTER_CONDITIONING,
    CONDITIONING,
    CONDITIONING_UNET,
    JOINT_FINETUNE_BUILDERS,
    PER_CLASS_FINETUNE_BUILDERS,
    get_method,
)
from ..core.selection import candidate_rank
from ..executors import ON_GPU
from ..integrity import outputs
from ..partitions import method_and_class, same_class_of
from ..profiles import Profile
from ..resources import (
    ComputeResource,
    DiffusionBackendResource,
    ImageStoreResource,
    WarehouseResource,
)
from ..versions import code_version
from .finetuning import GROUP, _multi, finetuned_method_keys

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


def _set_folder(epochs: tuple[int, ...]) -> str:
    """The folder of one candidate image set: its checkpoint epoch (one per cluster)."""
    return "epochs_" + "-".join(f"{e:03d}" for e in epochs)


def build(profile: Profile, up: SimpleNamespace) -> dict:
    """This stage's assets for ``profile``; ``up``: the earlier stages' definitions by name."""
    assets = {}
    per_class_keys = finetuned_method_keys(profile, PER_CLASS_FINETUNE_BUILDERS)
    if per_class_keys:
        assets["candidate_images"] = _candidates_asset(
            profile,
            "candidate_images",
            per_class_keys,
            [up.personalized_models, dg.AssetDep(up.class_prompts, partition_mapping=same_class_of(per_class_keys))],
            "Per class × personalized method, the images of every checkpoint candidate (best val, best train, first "
            "epochs): the class's prompts (⑧: its templates with the pseudo-word) through the fine-tuned "
            "conditionings as prompt_embeds, with the same seeds for every candidate (so candidates differ only by "
            "their checkpoint); ⑥ draws clusters in proportion to their sizes. Seeded, resumable, safety-checked "
            "like the prompt methods; candidates that share checkpoints share their images.",
        )
    joint_keys = finetuned_method_keys(profile, JOINT_FINETUNE_BUILDERS)
    if joint_keys:
        assets["unet_candidate_images"] = _candidates_asset(
            profile,
            "unet_candidate_images",
            joint_keys,
            [
                dg.AssetDep(
                    up.personalized_unets,
                    partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="method"),
                ),
                dg.AssetDep(up.class_prompts, partition_mapping=same_class_of(joint_keys)),
            ],
            "Per class × method (⑦ ⑨), the images of every checkpoint candidate of the method's fine-tuned UNet: "
            "the class's prompts through the candidate's UNet and the class's conditioning (⑦, as prompt_embeds) "
            "or pseudo-word in its templates (⑨), with the same seeds for every candidate. Seeded, resumable, "
            "safety-checked like the prompt methods; candidates that share a checkpoint share their images.",
        )
    return assets


def _candidates_asset(profile: Profile, name: str, keys: list[str], deps: list, description: str):
    """One candidate-images asset over ``keys`` × class (both kinds run ``_make_candidates``)."""

    @dg.asset(
        name=name,
        metadata=outputs(rows="candidate_manifest", paths={"candidate_manifest": "path"}),
        group_name=GROUP,
        code_version=code_version("1", profile.generation),
        **ON_GPU,
        partitions_def=_multi(keys),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=deps,
        kinds={"pytorch", "parquet"},
        description=description,
    )
    def candidates(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        image_store: ImageStoreResource,
        diffusion_backend: DiffusionBackendResource,
        compute: ComputeResource,  # its setup fixes the thread count and kernels generation runs with
    ) -> dg.MaterializeResult:
        return _make_candidates(profile, context, warehouse, image_store, diffusion_backend)

    return candidates


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
            texts, states = candidate_conditionings(image_store, pipeline, method, chosen, prompts, clusters)
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


def chosen_candidate(db, method: str, wnid: str) -> str:
    """The candidate checkpoint_selection chose for the class (an error naming what to run first)."""
    chosen = db.query(
        "SELECT DISTINCT candidate FROM checkpoint_selection WHERE method = ? AND wnid = ?", [method, wnid]
    )
    if chosen.is_empty():
        raise ValueError(
            f"no checkpoint chosen for {method}/{wnid}: materialize checkpoint_selection for this partition first"
        )
    return chosen["candidate"][0]


def candidate_conditionings(image_store, pipeline, method: str, checkpoints: pl.DataFrame, prompts, clusters):
    """One candidate's generation inputs: its fine-tuned UNet loaded into ``pipeline`` (⑦ ⑨), and per
    image the text it stands for and its text-encoder states (:func:`conditionings`)."""
    if checkpoints["unet"][0] is not None:
        pipeline.unet = load_unet(image_store, checkpoints["unet"][0], pipeline)
    return conditionings(pipeline, method, checkpoints, prompts, clusters)


def load_unet(image_store: ImageStoreResource, folder: str, pipeline):
    """A fine-tuned UNet (``save_pretrained`` folder in the image store), on the pipeline's device and dtype."""

    from diffusers import UNet2DConditionModel

    path = Path(folder)
    image_store.fetch(*path.relative_to(image_store.path()).parts)
    return UNet2DConditionModel.from_pretrained(path).to(pipeline.device, pipeline.unet.dtype).eval()


def conditionings(pipeline, method: str, checkpoints: pl.DataFrame, prompts: pl.DataFrame, clusters: list[int]):
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
