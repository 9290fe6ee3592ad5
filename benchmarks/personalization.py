"""Learning-rate probe for the personalized methods: ``python -m benchmarks.personalization``.

On a materialized home of the profile (``$AUGASSETS_HOME``, after ``augassets benchmark``), fine-tunes
one class's conditioning (⑤) or pseudo-word (⑧) at each learning rate — or, for ⑦ ``imagic`` and ⑨
``pseudoword_dm``, every class's conditioning or word with the UNet, at each UNet learning rate (the
per-class tensors at the profile's rate) — for a fixed number of epochs, with early stopping off, and
prints the val loss after every epoch (and ⑤'s before the first) with the seconds per epoch. ``PersonalizationSpec``'s rates are chosen from these curves: the rate at which
the val loss reaches its plateau well inside ``max_epochs`` without rising — a property of the
fine-tuning, not of which method wins.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.run import machine


def probe(profile_name: str, method: str, label: int, rates: list[float], epochs: int) -> list[str]:
    import torch
    from diffusers import StableDiffusionPipeline

    from augassets.core.finetune import (
        ClassImages,
        FinetuneSpec,
        JointClass,
        finetune_conditioning,
        finetune_jointly,
        finetune_textual_inversion,
    )
    from augassets.core.prompts import simple_prompt_nows, textual_inversion_templates
    from augassets.core.warehouse import Warehouse
    from augassets.profiles import get_profile

    profile = get_profile(profile_name)
    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)
    db = Warehouse(profile.home / "catalog.duckdb")
    wnid, name, lemmas = db.query("SELECT wnid, name, lemmas FROM class_catalog ORDER BY label").row(label)
    paths = {s: db.query("SELECT path FROM dataset_splits WHERE split = ? AND wnid = ? ORDER BY item", [s, wnid])["path"].to_list()
             for s in ("target", "val")}
    pipeline = StableDiffusionPipeline.from_pretrained(profile.home / "store" / "models" / "stable_diffusion")
    pipeline.set_progress_bar_config(disable=True)
    size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    images = ClassImages(paths["target"], paths["val"], size)
    spec = profile.personalization
    lines = [f"{method} on class {wnid} ({name}): {len(paths['target'])} target, {len(paths['val'])} val images, "
             f"{spec.val_draws} draws each, batch {spec.batch_size}; {machine()}"]
    joint = []
    if method in ("imagic", "pseudoword_dm"):
        for row in db.query("SELECT wnid, name, lemmas FROM class_catalog ORDER BY label").iter_rows(named=True):
            split = {s: db.query("SELECT path FROM dataset_splits WHERE split = ? AND wnid = ? ORDER BY item", [s, row["wnid"]])["path"].to_list()
                     for s in ("target", "val")}
            joint.append(JointClass(row["wnid"], simple_prompt_nows(row["name"]), row["lemmas"][0], ClassImages(split["target"], split["val"], size)))
        lines = [f"{method} on all {len(joint)} classes: {sum(len(c.images.train) for c in joint)} target, "
                 f"{sum(len(c.images.val) for c in joint)} val images, {spec.val_draws} draws each, batch {spec.batch_size}; "
                 f"UNet learning rates below, the {'words' if method == 'pseudoword_dm' else 'conditionings'} at "
                 f"{spec.word_lr if method == 'pseudoword_dm' else spec.conditioning_lr:g}; {machine()}"]
    with tempfile.TemporaryDirectory() as work:
        for rate in rates:
            run = FinetuneSpec(max_epochs=epochs, patience=epochs, batch_size=spec.batch_size, reference_batch_size=spec.reference_batch_size,
                               lr=rate, val_draws=spec.val_draws, early_epochs=1, seed=spec.seed)
            folder = Path(work) / f"{rate}"
            started = time.perf_counter()
            if method == "ft_conditioning":
                result = finetune_conditioning(pipeline, simple_prompt_nows(name), images, run, folder, {"lr": rate}, progress=lambda *_: None)
                start = f"{result.extra['initial_val_loss']:.5f} → "
            elif method == "textual_inversion":
                result = finetune_textual_inversion(pipeline, wnid, lemmas[0], textual_inversion_templates(), images, run,
                                                    folder, {"lr": rate}, progress=lambda *_: None)
                start = ""
            elif joint:
                run = replace(run, lr=spec.word_lr if method == "pseudoword_dm" else spec.conditioning_lr)
                fresh = StableDiffusionPipeline.from_pretrained(profile.home / "store" / "models" / "stable_diffusion")  # the run trains its UNet
                result = finetune_jointly(fresh, joint, run, rate, folder, {"lr": rate},
                                          textual_inversion_templates() if method == "pseudoword_dm" else None, progress=lambda *_: None)
                start = ""
            else:
                raise SystemExit(f"--method: ft_conditioning, textual_inversion, imagic or pseudoword_dm, not {method!r}")
            seconds = time.perf_counter() - started
            best = min(result.history, key=lambda h: h["val_loss"])
            lines.append(f"lr {rate:g}: val {start}" + " ".join(f"{h['val_loss']:.5f}" for h in result.history)
                         + f"  (best {best['val_loss']:.5f} at epoch {best['epoch']}; {seconds / epochs:.1f} s/epoch)")
            shutil.rmtree(folder, ignore_errors=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--method", default="ft_conditioning", choices=["ft_conditioning", "textual_inversion", "imagic", "pseudoword_dm"])
    parser.add_argument("--label", type=int, default=0, help="the class (catalog label) to fine-tune on")
    parser.add_argument("--rates", default="0.01,0.1,0.5")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    for line in probe(args.profile, args.method, args.label, [float(r) for r in args.rates.split(",")], args.epochs):
        print(line, flush=True)


if __name__ == "__main__":
    main()
