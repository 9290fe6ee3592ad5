"""The personalized methods (⑤ ⑥ ⑧): the fine-tuning core on one smoke class (kill and resume, NaN,
foreign resume state, diffusers' own loaders), and the Dagster chain on the smoke benchmark —
fine-tuning, candidates' images, checkpoint selection by val accuracy, the chosen images downstream."""

from dataclasses import replace
from pathlib import Path

import pytest

from augassets.core.warehouse import Warehouse

_FINETUNE_SCRIPT = """
import sys
from pathlib import Path
import augassets
import torch
from diffusers import StableDiffusionPipeline
from augassets.core.finetune import ClassImages, FinetuneSpec, finetune_conditioning
torch.set_num_threads(1)
sd, folder, wnid, spec = sys.argv[1], Path(sys.argv[2]), sys.argv[3], FinetuneSpec(**eval(sys.argv[4]))
train, val = sys.argv[5].split(","), sys.argv[6].split(",")
pipeline = StableDiffusionPipeline.from_pretrained(sd)
finetune_conditioning(pipeline, sys.argv[7], ClassImages(train, val, 32), spec, folder, {"method":
"ft_conditioning", "wnid": wnid})
"""


def test_ft_conditioning_trains_resumes_after_a_kill_and_generates(benchmark_run, tmp_path):
    """⑤ on one smoke class: the conditioning's val loss falls below the encoded prompt's; the candidate
    checkpoints (best train, best val, epochs 1–3) are kept and the rest removed; kill -9 of a real
    training process after its second epoch, then a resume, ends with exactly the parameters and
    losses of an uninterrupted run; a resume state of another run is refused, a NaN loss names its
    step; the saved conditioning drives the pipeline through ``prompt_embeds``."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from augassets.core.finetune import ClassImages, FinetuneError, FinetuneSpec, finetune_conditioning

    profile, _ = benchmark_run
    sd = profile.home / "store" / "models" / "stable_diffusion"
    db = Warehouse(profile.tables)
    wnid, name = db.query("SELECT wnid, name FROM class_catalog ORDER BY label").row(0)
    paths = {
        s: db.query("SELECT path FROM dataset_splits WHERE split = ? AND wnid = ? ORDER BY item", [s, wnid])[
            "path"
        ].to_list()
        for s in ("target", "val")
    }
    options = {"max_epochs": 6, "patience": 10, "lr": 5e-3, "val_draws": 4}
    spec, signature, prompt = (
        FinetuneSpec(**options),
        {"method": "ft_conditioning", "wnid": wnid},
        name.replace(" ", ""),
    )
    images = ClassImages(paths["target"], paths["val"], 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipeline = StableDiffusionPipeline.from_pretrained(sd)
        pipeline.set_progress_bar_config(disable=True)
        clean = finetune_conditioning(pipeline, prompt, images, spec, tmp_path / "clean", signature)
        assert [h["epoch"] for h in clean.history] == list(range(1, 7))
        best = clean.candidates["best_val"]
        assert clean.history[best - 1]["val_loss"] < clean.extra["initial_val_loss"]
        kept = {int(p.stem.removeprefix("epoch_")) for p in (tmp_path / "clean").glob("epoch_*.safetensors")}
        assert kept == set(clean.candidates.values()) and {1, 2, 3} <= kept

        folder = tmp_path / "killed"
        command = [
            sys.executable,
            "-c",
            _FINETUNE_SCRIPT,
            str(sd),
            str(folder),
            wnid,
            repr(options),
            ",".join(paths["target"]),
            ",".join(paths["val"]),
            prompt,
        ]
        child = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (folder / "epoch_003.safetensors").exists():  # written after epoch 2's resume state
            assert child.poll() is None and time.time() < deadline, "the training process ended before its third epoch"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        resumed = finetune_conditioning(pipeline, prompt, images, spec, folder, signature)
        assert 2 <= resumed.resumed_from < 6
        assert torch.equal(resumed.params["prompt_embeds"], clean.params["prompt_embeds"])
        strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
        assert strip(resumed.history) == strip(clean.history)

        with pytest.raises(
            FinetuneError,
            match=r"refusing to resume from .*resume.pt: it was written for .*ft_conditioning.* this run is .*other",
        ):
            finetune_conditioning(pipeline, prompt, images, spec, folder, {**signature, "wnid": "other"})
        nan = torch.full_like(clean.params["prompt_embeds"], float("nan"))
        with pytest.raises(
            FinetuneError,
            match=r"the loss became nan at step 1 of epoch 1; no epoch finished \(lower the learning rate\)",
        ):
            finetune_conditioning(pipeline, prompt, images, spec, tmp_path / "nan", signature, initial=nan)

        embeds = load_file(str(tmp_path / "clean" / f"epoch_{best:03d}.safetensors"))["prompt_embeds"]
        image = pipeline(
            prompt_embeds=embeds, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np"
        ).images
        assert image.shape == (1, 32, 32, 3) and bool(torch.isfinite(torch.from_numpy(image)).all())
    finally:
        torch.set_num_threads(threads)


def test_textual_inversion_trains_one_word_that_diffusers_loads(benchmark_run, tmp_path):
    """⑧ on one smoke class: the pseudo-word starts at the embedding of the final word of the class's
    first lemma, only its row trains (the caller's tokenizer and text encoder stay as they were), a
    word the tokenizer already has is replaced by the next free one, and every kept checkpoint loads
    into a fresh pipeline with diffusers' own ``load_textual_inversion`` and is used in a prompt."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from augassets.core.finetune import ClassImages, FinetuneSpec, finetune_textual_inversion, pseudo_word
    from augassets.core.prompts import load_templates

    profile, _ = benchmark_run
    sd = profile.home / "store" / "models" / "stable_diffusion"
    db = Warehouse(profile.tables)
    wnid, lemmas = db.query("SELECT wnid, lemmas FROM class_catalog ORDER BY label").row(0)
    paths = {
        s: db.query("SELECT path FROM dataset_splits WHERE split = ? AND wnid = ? ORDER BY item", [s, wnid])[
            "path"
        ].to_list()
        for s in ("target", "val")
    }
    pipeline = StableDiffusionPipeline.from_pretrained(sd)
    vocabulary, weights = len(pipeline.tokenizer), pipeline.text_encoder.get_input_embeddings().weight.detach().clone()
    templates = load_templates("textual_inversion_templates.txt")
    result = finetune_textual_inversion(
        pipeline,
        wnid,
        lemmas[0],
        templates,
        ClassImages(paths["target"], paths["val"], 32),
        FinetuneSpec(max_epochs=3, patience=10, lr=5e-3, val_draws=4),
        tmp_path / "ti",
        {"method": "textual_inversion", "wnid": wnid},
    )
    word = result.extra["word"]
    assert word == f"<{wnid}>" and len(pipeline.tokenizer) == vocabulary
    assert torch.equal(pipeline.text_encoder.get_input_embeddings().weight, weights)
    final = lemmas[0].split()[-1]
    assert torch.allclose(
        result.extra["initial"][0], weights[pipeline.tokenizer(final, add_special_tokens=False).input_ids].mean(0)
    )
    assert not torch.equal(result.params[word], result.extra["initial"]), "the word's embedding trained"

    assert sorted(set(result.candidates.values())) == [1, 2, 3]
    for epoch in (1, 2, 3):
        checkpoint = tmp_path / "ti" / f"epoch_{epoch:03d}.safetensors"
        fresh = StableDiffusionPipeline.from_pretrained(sd)
        fresh.set_progress_bar_config(disable=True)
        fresh.load_textual_inversion(str(checkpoint))
        row = fresh.text_encoder.get_input_embeddings().weight[fresh.tokenizer.convert_tokens_to_ids(word)]
        assert torch.equal(row, load_file(str(checkpoint))[word][0])
    assert torch.equal(row, result.params[word][0]), "the last epoch's checkpoint is the trained embedding"
    image = fresh(
        f"a photo of a {word}", num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert image.shape == (1, 32, 32, 3)

    lines = []
    assert pseudo_word(fresh.tokenizer, wnid, lines.append) == f"<{wnid}-1>"
    assert lines == [f"pseudo-word <{wnid}> is already a token of the tokenizer: using <{wnid}-1>"]


def test_cluster_conditioning_trains_one_conditioning_per_cluster(benchmark_run, tmp_path):
    """⑥ on one smoke class, embedded by the mini CLIP's image tower: k-means splits its target images
    into k clusters, each trains its own conditioning on its own images (checkpoints per cluster); a
    class with fewer images than k gets fewer clusters and says so; generation draws clusters in
    proportion to their sizes."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    from augassets.core.clip import encode_image_batches
    from augassets.core.finetune import (
        ClassImages,
        FinetuneSpec,
        cluster_images,
        draw_clusters,
        finetune_cluster_conditionings,
    )

    profile, _ = benchmark_run
    store = profile.home / "store"
    db = Warehouse(profile.tables)
    wnid, name = db.query("SELECT wnid, name FROM class_catalog ORDER BY label").row(0)
    paths = {
        s: db.query("SELECT path FROM dataset_splits WHERE split = ? AND wnid = ? ORDER BY item", [s, wnid])[
            "path"
        ].to_list()
        for s in ("target", "val")
    }
    clip = CLIPModel.from_pretrained(store / "models" / "clip")
    embed = lambda files: np.concatenate(list(encode_image_batches(clip, files, profile.world.pool.image_size)))  # noqa: E731
    pipeline = StableDiffusionPipeline.from_pretrained(store / "models" / "stable_diffusion")
    lines = []
    results = finetune_cluster_conditionings(
        pipeline,
        name.replace(" ", ""),
        ClassImages(paths["target"], paths["val"], 32),
        embed(paths["target"]),
        embed(paths["val"]),
        3,
        FinetuneSpec(max_epochs=2, patience=10, lr=5e-3, val_draws=2),
        tmp_path / "ft",
        {"method": "ft_cluster_conditioning", "wnid": wnid},
        lines.append,
    )
    assert len(results) == 3 and sum(r.extra["size"] for r in results) == len(paths["target"])
    assert all(r.extra["size"] >= 1 and len(r.history) == 2 for r in results)
    for cluster, result in enumerate(results):
        assert (tmp_path / "ft" / f"cluster_{cluster}" / "epoch_001.safetensors").is_file()
        assert result.params["prompt_embeds"].shape == (1, 77, pipeline.text_encoder.config.hidden_size)
    assert not torch.equal(results[0].params["prompt_embeds"], results[1].params["prompt_embeds"])

    labels, centroids = cluster_images(np.eye(2, 4, dtype=np.float32), 5, 0, lines.append)
    assert (
        len(centroids) == 2
        and sorted(labels) == [0, 1]
        and lines[-1] == "only 2 training images for k=5 clusters: using 2 clusters"
    )
    assert draw_clusters([5, 3, 2], 7) == [0, 0, 0, 0, 1, 1, 2]
    assert draw_clusters([1, 1, 1], 3) == [0, 1, 2]


PER_CLASS = ("ft_conditioning", "ft_cluster_conditioning", "textual_inversion")
JOINT = ("imagic", "pseudoword_dm")  # the UNet fine-tuned, one run over all classes
FINETUNED = PER_CLASS + JOINT


def test_personalized_methods_fine_tune_choose_a_checkpoint_by_val_accuracy_and_feed_the_table(benchmark_run):
    """The smoke benchmark's five personalized methods. ⑤ ⑥ ⑧: a fine-tuning run per class (⑥: per
    cluster, sizes summing to the target); ⑦ ⑨: one run per method over all classes, whose kept epochs
    hold a fine-tuned UNet (save_pretrained) and each class's conditioning or word. Each keeps the
    best-val, best-train and first-epoch checkpoints (⑦: its own number of first epochs); every
    candidate's images made with the same seeds, candidates on the same checkpoint sharing files; one
    val-only classifier per candidate label and the highest val accuracy chosen; the chosen candidate's
    images are the method's augmentation images, whose rows name the checkpoint; all five are rows of
    the results table, and their artifacts load with diffusers' own loaders."""
    import hashlib

    import dagster as dg
    import polars as pl
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file

    from augassets.core.selection import candidate_rank

    profile, _ = benchmark_run
    spec = profile.personalization
    db = Warehouse(profile.tables)
    wnids = db.query("SELECT wnid FROM class_catalog ORDER BY label")["wnid"].to_list()
    targets = dict(
        db.query("SELECT wnid, count(*) AS n FROM dataset_splits WHERE split = 'target' GROUP BY wnid").iter_rows()
    )
    checkpoints, history = db.query("SELECT * FROM finetune_checkpoints"), db.query("SELECT * FROM finetune_history")
    labels_of = {
        m: {"best_val", "best_train", *(f"epoch_{e}" for e in range(1, spec.early_epochs + 1))} for m in FINETUNED
    }
    labels_of["imagic"] = {
        f"epoch_{e}" for e in range(1, spec.imagic_early_epochs + 1)
    }  # ⑦: its first epochs instead (the paper)
    sd = profile.home / "store" / "models" / "stable_diffusion"
    base_unet = UNet2DConditionModel.from_pretrained(sd / "unet").state_dict()
    for method in FINETUNED:
        for wnid in wnids:
            runs = checkpoints.filter((pl.col("method") == method) & (pl.col("wnid") == wnid))
            assert runs["cluster"].n_unique() == (spec.clusters if method == "ft_cluster_conditioning" else 1), (
                method,
                wnid,
            )
            assert runs.unique("cluster")["cluster_size"].sum() == targets[wnid]
            for cluster in runs["cluster"].unique():
                rows = runs.filter(pl.col("cluster") == cluster)
                run_of = (pl.col("method") == method) & (
                    pl.col("wnid").is_null() if method in JOINT else pl.col("wnid") == wnid
                )
                epochs = history.filter(run_of & (pl.col("cluster") == cluster))
                assert set(rows["candidate"]) == labels_of[method] and 1 <= epochs.height <= spec.max_epochs
                assert rows["unet"].is_null().all() == (method in PER_CLASS)
                best = dict(rows.select("candidate", "epoch").iter_rows())
                if method == "imagic":  # no early stop before its candidate epochs
                    assert epochs.height >= spec.imagic_early_epochs and all(
                        best[f"epoch_{e}"] == e for e in range(1, spec.imagic_early_epochs + 1)
                    )
                else:
                    assert best["best_val"] == epochs.sort("val_loss", "epoch")["epoch"][0]
                    assert best["best_train"] == epochs.sort("train_loss", "epoch")["epoch"][0]
                for path in rows["checkpoint"]:
                    assert Path(path).is_file(), path
        if method in JOINT:  # one UNet per kept epoch, shared by the classes, fine-tuned away from SD's
            unets = checkpoints.filter(pl.col("method") == method).group_by("epoch").agg(pl.col("unet").n_unique())
            assert (unets["unet"] == 1).all()
            for folder in checkpoints.filter(pl.col("method") == method)["unet"].unique():
                tuned = UNet2DConditionModel.from_pretrained(folder).state_dict()
                assert tuned.keys() == base_unet.keys() and any(
                    not torch.equal(tuned[k], base_unet[k]) for k in tuned
                ), folder

    candidates = db.query("SELECT * FROM candidate_manifest")
    n = profile.generation.factor * max(targets.values())
    per_set = candidates.group_by("method", "wnid", "candidate").agg(
        pl.len().alias("images"), pl.col("seed").sort_by("rank"), pl.col("epochs").first()
    )
    assert per_set.height == sum(len(labels_of[m]) for m in FINETUNED) * len(wnids) and (per_set["images"] == n).all()
    for (method, wnid), sets in per_set.group_by("method", "wnid"):
        assert sets["seed"].n_unique() == 1, f"{method}/{wnid}: every candidate is sampled with the same seeds"
        files = (
            candidates.filter((pl.col("method") == method) & (pl.col("wnid") == wnid))
            .group_by("candidate")
            .agg(pl.col("path").sort())
        )
        by_label = dict(zip(files["candidate"], files["path"].to_list()))
        epochs = dict(sets.select("candidate", "epochs").iter_rows())
        for a in by_label:
            for b in by_label:
                assert (by_label[a] == by_label[b]) == (epochs[a] == epochs[b]), (
                    "candidates share images exactly when they share checkpoints"
                )

    scores = db.query("SELECT * FROM checkpoint_scores")
    assert "test_top1" not in scores.columns, "selection looks at val only"
    for method in FINETUNED:
        rows = scores.filter(pl.col("method") == method)
        assert set(rows["candidate"]) == labels_of[method] and rows["chosen"].sum() == 1
        best = max(rows.iter_rows(named=True), key=lambda r: (r["val_top1"], -candidate_rank(r["candidate"])))
        assert rows.filter(pl.col("chosen"))["candidate"][0] == best["candidate"]
        chosen = db.query("SELECT * FROM checkpoint_selection WHERE method = ?", [method])
        assert set(chosen["wnid"]) == set(wnids) and set(chosen["candidate"]) == {best["candidate"]}
        manifest = db.query("SELECT * FROM augmentation_manifest WHERE method = ? ORDER BY wnid, rank", [method])
        assert manifest.height == n * len(wnids) and set(manifest["candidate"]) == {best["candidate"]}
        made = candidates.filter((pl.col("method") == method) & (pl.col("candidate") == best["candidate"])).sort(
            "wnid", "rank"
        )
        digest = lambda paths: [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths]  # noqa: E731
        assert digest(manifest["path"]) == digest(made["path"]), "the method's images are its chosen candidate's"
        assert manifest["checkpoint"].to_list() == made["checkpoint"].to_list()
        assert set(manifest["checkpoint"]) <= set(
            checkpoints.filter(pl.col("candidate") == best["candidate"])["checkpoint"]
        )
    results = db.query("SELECT * FROM results_table")
    runs = dict(results.select("method", "n_runs").iter_rows())
    assert all(runs[m] == profile.classifier.replicates for m in FINETUNED)

    # The artifacts load with diffusers' own loaders: ⑧ ⑨'s chosen pseudo-words, ⑤ ⑦'s conditionings as
    # prompt_embeds, ⑦ ⑨'s UNets with from_pretrained in place of SD's.
    def chosen(method: str) -> dict:
        return db.query(
            "SELECT c.checkpoint, c.unet FROM checkpoint_selection s JOIN finetune_checkpoints c USING (method, "
            "wnid, candidate) "
            "WHERE method = ? ORDER BY wnid",
            [method],
        ).row(0, named=True)

    for method, unet in (
        ("textual_inversion", None),
        ("ft_conditioning", None),
        ("pseudoword_dm", "unet"),
        ("imagic", "unet"),
    ):
        pipeline = StableDiffusionPipeline.from_pretrained(sd)
        pipeline.set_progress_bar_config(disable=True)
        row = chosen(method)
        if unet:
            pipeline.unet = UNet2DConditionModel.from_pretrained(row["unet"])
        if method in ("textual_inversion", "pseudoword_dm"):
            word = next(iter(load_file(row["checkpoint"])))
            pipeline.load_textual_inversion(row["checkpoint"])
            assert word == f"<{wnids[0]}>" and word in pipeline.tokenizer.get_vocab()
            prompt = {"prompt": f"a photo of a {word}"}
        else:
            prompt = {"prompt_embeds": load_file(row["checkpoint"])["prompt_embeds"]}
        image = pipeline(
            **prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
        ).images
        assert image.shape == (1, 32, 32, 3), method

    from augassets.build import build_defs

    graph = build_defs(profile).resolve_asset_graph()
    parents = lambda name: {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}  # noqa: E731
    assert "checkpoint_selection" in parents("augmentation_images") and "candidate_images" in parents(
        "checkpoint_selection"
    )
    assert "personalized_models" in parents("candidate_images") and "personalized_unets" in parents(
        "unet_candidate_images"
    )
    assert "unet_candidate_images" in parents("checkpoint_selection")
    metadata = (
        dg.DagsterInstance.get()
        .get_latest_materialization_event(dg.AssetKey("personalized_models"))
        .asset_materialization.metadata
    )
    assert "loss_curves" in metadata and metadata["loss_curves"].value.startswith(
        "![loss curves](data:image/png;base64,"
    )
    assert metadata["runs"].value >= 1


def test_a_run_with_other_settings_has_its_own_folder_and_the_recorded_one_is_replaced_only_when_done(tmp_path):
    """⑥ at k = 15 killed part-way, then k = 1: before, both used the class's one folder, so the k = 1
    run refused the k = 15 resume state (or deleted the checkpoints the recorded rows point at). Each
    setting now has its own run folder; once a run is recorded, the finished runs beside it go, and an
    unfinished run of other settings (it has a resume state) stays to resume."""
    from augassets.assets.finetuning import drop_other_runs, run_folder

    signature = {"method": "ft_cluster_conditioning", "wnid": "n01440764", "spec": {"lr": 0.01}, "weights": "tiny"}
    k1, k15, k5 = (run_folder(tmp_path, {**signature, "k": k}) for k in (1, 15, 5))
    assert len({k1, k15, k5}) == 3 and k1 == run_folder(tmp_path, {**signature, "k": 1})
    (k15 / "cluster_3").mkdir(parents=True)
    (k15 / "cluster_3" / "resume.pt").write_bytes(b"state")  # killed part-way
    (k5 / "cluster_0").mkdir(parents=True)
    (k5 / "cluster_0" / "epoch_002.safetensors").write_bytes(b"weights")  # the earlier recorded run
    (tmp_path / "epoch_001.safetensors").write_bytes(b"weights")  # an earlier version's layout: no run folder
    k1.mkdir()
    said = []
    drop_other_runs(k1, said.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([k1.name, k15.name])
    assert len(said) == 2 and all("no longer recorded" in line for line in said)


def test_imagic_keeps_its_first_epochs_instead_of_the_best_losses_and_does_not_stop_before_them(tmp_path):
    """⑦ (the paper): the checkpoints of epochs 1–8 are the candidates, not the best train and val losses, and
    early stopping waits until all eight exist; settings that cannot reach them are an error naming the settings."""
    import torch

    from augassets.assets.finetuning import finetune_spec
    from augassets.core.finetune import FinetuneError, finetune
    from augassets.core.methods import CONDITIONING_UNET, PSEUDO_WORD_UNET
    from augassets.profiles import PersonalizationSpec

    settings = PersonalizationSpec(max_epochs=12, patience=1, early_epochs=2, imagic_early_epochs=5)
    imagic, pseudoword = finetune_spec(settings, CONDITIONING_UNET), finetune_spec(settings, PSEUDO_WORD_UNET)
    assert (imagic.loss_candidates, imagic.min_epochs, imagic.early_epochs) == (False, 5, 5)
    assert (pseudoword.loss_candidates, pseudoword.min_epochs, pseudoword.early_epochs) == (True, 0, 2)

    def run(spec, folder):
        # The val loss is best at epoch 1 and worse after: a patience of 1 would stop at epoch 2.
        params = {"w": torch.zeros(3)}
        val = iter([0.1 * e for e in range(1, 20)])
        return finetune(
            params,
            lambda index, generator: (params["w"] - 1).pow(2).sum(),
            lambda: next(val),
            4,
            spec,
            folder,
            {"run": folder.name},
        )

    kept = run(imagic, tmp_path / "imagic")
    assert (
        len(kept.history) == 5
        and kept.candidates == {f"epoch_{e}": e for e in range(1, 6)}
        and kept.best_val_epoch == 1
    )
    assert sorted(p.name for p in (tmp_path / "imagic").glob("epoch_*.safetensors")) == [
        f"epoch_00{e}.safetensors" for e in range(1, 6)
    ]
    other = run(pseudoword, tmp_path / "pseudoword")
    assert len(other.history) == 2 and set(other.candidates) == {"best_train", "best_val", "epoch_1", "epoch_2"}

    short = PersonalizationSpec(max_epochs=4, imagic_early_epochs=8)
    with pytest.raises(
        ValueError,
        match="personalization.max_epochs is 4: raise max_epochs to at least 8 or lower "
        "personalization.imagic_early_epochs",
    ):
        finetune_spec(short, CONDITIONING_UNET)
    with pytest.raises(FinetuneError, match="at least 8 epochs .* may train only 4"):
        run(replace(imagic, max_epochs=4, min_epochs=8), tmp_path / "short")


def test_the_joint_runs_words_have_their_own_rate_and_only_the_joint_runs_version_reads_it():
    """⑨ trains every class's word in one run, where the optimizer moves each word at every step: its words
    train at ``joint_word_lr`` where a profile sets one (mini: ⑧'s per-class rate carried them out of the
    embedding range), ⑧ keeps ``word_lr``. Setting it changes the joint run's code version only: the per-class
    runs (⑤ ⑥ ⑧) do not read it, and an unset field leaves every recorded version as it was."""
    import dagster as dg

    from augassets.assets.finetuning import finetune_spec
    from augassets.build import build_defs
    from augassets.core.methods import PSEUDO_WORD, PSEUDO_WORD_UNET
    from augassets.profiles import MINI_PERSONALIZATION, PersonalizationSpec, get_profile

    default = PersonalizationSpec()
    assert "joint_word_lr" not in repr(default)
    assert finetune_spec(default, PSEUDO_WORD_UNET).lr == finetune_spec(default, PSEUDO_WORD).lr == default.word_lr
    assert finetune_spec(MINI_PERSONALIZATION, PSEUDO_WORD).lr == 0.05
    assert finetune_spec(MINI_PERSONALIZATION, PSEUDO_WORD_UNET).lr == 5e-3

    smoke = replace(get_profile("smoke"), methods=("real_p", "textual_inversion", "pseudoword_dm"))
    rated = replace(smoke, personalization=replace(smoke.personalization, joint_word_lr=1e-4))

    def versions(profile):
        graph = build_defs(profile).resolve_asset_graph()
        names = ("personalized_models", "personalized_unets")
        return {name: graph.get(dg.AssetKey(name)).code_version for name in names}

    before, after = versions(smoke), versions(rated)
    assert before["personalized_models"] == after["personalized_models"]
    assert before["personalized_unets"] != after["personalized_unets"]


def test_cluster_embeddings_come_from_inception_v3_as_the_paper_or_the_worlds_clip(tmp_path, monkeypatch):
    """⑥ clusters on torchvision's Inception-v3 pool features (2,048-d) by default, its weights from the local
    torch hub cache only: here the architecture with random weights embeds real image files and k-means splits
    them; without cached weights the error names the file and the setting; the mini profiles keep their CLIP."""
    import numpy as np

    from augassets.assets.finetuning import cluster_embedder
    from augassets.core.embedders import EmbedderError
    from augassets.core.finetune import cluster_images
    from augassets.profiles import PersonalizationSpec, get_profile

    from .conftest import write_image

    assert PersonalizationSpec().cluster_embedder == "inception_v3"
    assert (
        get_profile("mini").personalization.cluster_embedder
        == get_profile("smoke").personalization.cluster_embedder
        == "clip"
    )
    paths = [
        str(write_image(tmp_path / f"{i}.png", color=(200, 30, 30) if i < 3 else (30, 30, 200), size=40))
        for i in range(6)
    ]
    embed = cluster_embedder("inception_v3_untrained", clip_encoder=None)
    embeddings = embed(paths)
    assert embeddings.shape == (6, 2048) and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    assert np.array_equal(embed(paths[:2]), embeddings[:2]), (
        "eval mode: an image's embedding does not depend on its batch"
    )
    labels, _ = cluster_images(embeddings, 2, seed=0, say=lambda line: None)
    assert labels[:3].tolist() == [labels[0]] * 3 and labels[3:].tolist() == [labels[3]] * 3 and labels[0] != labels[3]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(
        EmbedderError, match=r"inception_v3_google-.*\.pth .*or set personalization.cluster_embedder to 'clip'"
    ):
        cluster_embedder("inception_v3", clip_encoder=None)
    with pytest.raises(ValueError, match="personalization.cluster_embedder 'vgg'"):
        cluster_embedder("vgg", clip_encoder=None)
