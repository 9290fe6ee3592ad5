"""Learning-rate probe and ⑥'s cluster ablation for the personalized methods: ``python -m benchmarks.personalization``.

On a materialized home of the profile (``$AUGASSETS_HOME``, after ``augassets benchmark``), fine-tunes
one class's conditioning (⑤) or pseudo-word (⑧) at each learning rate — or, for ⑦ ``imagic`` and ⑨
``pseudoword_dm``, every class's conditioning or word with the UNet, at each UNet learning rate (the
per-class tensors at the profile's rate) — for a fixed number of epochs, with early stopping off, and
prints the val loss after every epoch (and ⑤'s before the first) with the seconds per epoch.
``PersonalizationSpec``'s rates are chosen from these curves: the rate at which
the val loss reaches its plateau well inside ``max_epochs`` without rising — a property of the
fine-tuning, not of which method wins.

``--cluster-ks 1,10,15``: the paper's ablation of ⑥'s k. For each k, ``augassets benchmark`` runs
``real_p`` and ⑥ with ``AUGASSETS_CLUSTERS=k`` on the same home (the whole protocol: fine-tuning,
candidates, selection by val accuracy, five classifiers), then one table row is read from the
catalog: clusters per class, fine-tuning seconds, chosen checkpoint, top-1, class fidelity, domain
match. The home keeps the last k's ⑥; the next plain ``augassets benchmark`` retrains it at the
profile's k. Each run's log goes to ``reports/cluster_k_<k>.log`` in the profile's home.
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
    db = Warehouse(profile.tables)
    wnid, name, lemmas = db.query("SELECT wnid, name, lemmas FROM class_catalog ORDER BY label").row(label)
    paths = {
        s: db.query("SELECT path FROM dataset_splits WHERE split = ? AND wnid = ? ORDER BY item", [s, wnid])[
            "path"
        ].to_list()
        for s in ("target", "val")
    }
    pipeline = StableDiffusionPipeline.from_pretrained(profile.home / "store" / "models" / "stable_diffusion")
    pipeline.set_progress_bar_config(disable=True)
    size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    images = ClassImages(paths["target"], paths["val"], size)
    spec = profile.personalization
    lines = [
        f"{method} on class {wnid} ({name}): {len(paths['target'])} target, {len(paths['val'])} val images, "
        f"{spec.val_draws} draws each, batch {spec.batch_size}; {machine()}"
    ]
    joint = []
    if method in ("imagic", "pseudoword_dm"):
        for row in db.query("SELECT wnid, name, lemmas FROM class_catalog ORDER BY label").iter_rows(named=True):
            split = {
                s: db.query(
                    "SELECT path FROM dataset_splits WHERE split = ? AND wnid = ? ORDER BY item", [s, row["wnid"]]
                )["path"].to_list()
                for s in ("target", "val")
            }
            joint.append(
                JointClass(
                    row["wnid"],
                    simple_prompt_nows(row["name"]),
                    row["lemmas"][0],
                    ClassImages(split["target"], split["val"], size),
                )
            )
        lines = [
            f"{method} on all {len(joint)} classes: {sum(len(c.images.train) for c in joint)} target, "
            f"{sum(len(c.images.val) for c in joint)} val images, {spec.val_draws} draws each, batch "
            f"{spec.batch_size}; "
            f"UNet learning rates below, the {'words' if method == 'pseudoword_dm' else 'conditionings'} at "
            f"{spec.words_lr(joint=True) if method == 'pseudoword_dm' else spec.conditioning_lr:g}; {machine()}"
        ]
    with tempfile.TemporaryDirectory() as work:
        for rate in rates:
            run = FinetuneSpec(
                max_epochs=epochs,
                patience=epochs,
                batch_size=spec.batch_size,
                reference_batch_size=spec.reference_batch_size,
                lr=rate,
                val_draws=spec.val_draws,
                early_epochs=1,
                seed=spec.seed,
            )
            folder = Path(work) / f"{rate}"
            started = time.perf_counter()
            if method == "ft_conditioning":
                result = finetune_conditioning(
                    pipeline, simple_prompt_nows(name), images, run, folder, {"lr": rate}, progress=lambda *_: None
                )
                start = f"{result.extra['initial_val_loss']:.5f} → "
            elif method == "textual_inversion":
                result = finetune_textual_inversion(
                    pipeline,
                    wnid,
                    lemmas[0],
                    textual_inversion_templates(),
                    images,
                    run,
                    folder,
                    {"lr": rate},
                    progress=lambda *_: None,
                )
                start = ""
            elif joint:
                run = replace(run, lr=spec.words_lr(joint=True) if method == "pseudoword_dm" else spec.conditioning_lr)
                fresh = StableDiffusionPipeline.from_pretrained(
                    profile.home / "store" / "models" / "stable_diffusion"
                )  # the run trains its UNet
                result = finetune_jointly(
                    fresh,
                    joint,
                    run,
                    rate,
                    folder,
                    {"lr": rate},
                    textual_inversion_templates() if method == "pseudoword_dm" else None,
                    progress=lambda *_: None,
                )
                start = ""
            else:
                raise SystemExit(
                    f"--method: ft_conditioning, textual_inversion, imagic or pseudoword_dm, not {method!r}"
                )
            seconds = time.perf_counter() - started
            best = min(result.history, key=lambda h: h["val_loss"])
            lines.append(
                f"lr {rate:g}: val {start}"
                + " ".join(f"{h['val_loss']:.5f}" for h in result.history)
                + f"  (best {best['val_loss']:.5f} at epoch {best['epoch']}; {seconds / epochs:.1f} s/epoch)"
            )
            shutil.rmtree(folder, ignore_errors=True)
    return lines


def cluster_ablation(profile_name: str, ks: list[int]) -> list[str]:
    """One row per k of ⑥'s cluster count, each from a full ``augassets benchmark`` run."""
    import os
    import subprocess
    import sys

    from augassets.core.warehouse import Warehouse
    from augassets.profiles import get_profile

    profile = get_profile(profile_name)
    home = profile.home
    (home / "reports").mkdir(parents=True, exist_ok=True)
    method = "ft_cluster_conditioning"
    lines = [
        f"⑥ cluster ablation on {profile_name} ({home}); {machine()}",
        "",
        "| k | clusters per class (min–max) | fine-tuning s | chosen checkpoint (val top-1 of the candidates) | "
        "top-1 (%) mean ± s.e. "
        "| real_p top-1 (%) | class fidelity | domain match | run s |",
        "| ---: | --- | ---: | --- | --- | --- | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    for k in ks:
        log_path = home / "reports" / f"cluster_k_{k}.log"
        env = {
            **os.environ,
            "AUGASSETS_PROFILE": profile_name,
            "AUGASSETS_METHODS": f"real_p,{method}",
            "AUGASSETS_CLUSTERS": str(k),
        }
        started = time.perf_counter()
        with log_path.open("w") as log:
            code = subprocess.run(
                [sys.executable, "-m", "augassets.cli", "benchmark"], env=env, stdout=log, stderr=subprocess.STDOUT
            ).returncode
        seconds = time.perf_counter() - started
        if code:
            raise SystemExit(f"k={k}: augassets benchmark exited {code}; its log: {log_path}")
        db = Warehouse(profile.tables)
        counts = db.query(
            "SELECT wnid, count(DISTINCT cluster) AS n FROM finetune_checkpoints WHERE method = ? GROUP BY wnid",
            [method],
        )["n"]
        tuned = db.query("SELECT sum(seconds) AS s FROM finetune_history WHERE method = ?", [method])["s"][0]
        scores = db.query("SELECT candidate, val_top1, chosen FROM checkpoint_scores WHERE method = ?", [method])
        chosen = scores.filter(scores["chosen"])["candidate"][0]
        table = {
            r["method"]: r
            for r in db.query("SELECT method, top1_mean, top1_se FROM results_table").iter_rows(named=True)
        }
        fidelity = db.query("SELECT avg(fidelity) AS f FROM class_fidelity WHERE method = ?", [method])["f"][0]
        match = db.query("SELECT separability FROM domain_match WHERE method = ?", [method])["separability"][0]
        row = table[method]
        line = (
            f"| {k} | {counts.min()}–{counts.max()} | {tuned:.0f} | {chosen.replace('_', ' ')} ("
            + " / ".join(
                f"{r['candidate'].replace('_', ' ')} {100 * r['val_top1']:.2f}" for r in scores.iter_rows(named=True)
            )
            + f") | {100 * row['top1_mean']:.2f} ± {100 * row['top1_se']:.2f} | "
            f"{100 * table['real_p']['top1_mean']:.2f} "
            f"| {fidelity:.3f} | {match:.3f} | {seconds:.0f} |"
        )
        print(line, flush=True)
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mini")
    parser.add_argument(
        "--method",
        default="ft_conditioning",
        choices=["ft_conditioning", "textual_inversion", "imagic", "pseudoword_dm"],
    )
    parser.add_argument("--label", type=int, default=0, help="the class (catalog label) to fine-tune on")
    parser.add_argument("--rates", default="0.01,0.1,0.5")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument(
        "--cluster-ks", default="", help="instead of the probe: ⑥'s cluster ablation at these k, e.g. 1,10,15"
    )
    args = parser.parse_args()
    if args.cluster_ks:
        cluster_ablation(args.profile, [int(k) for k in args.cluster_ks.split(",")])
        return
    for line in probe(args.profile, args.method, args.label, [float(r) for r in args.rates.split(",")], args.epochs):
        print(line, flush=True)


if __name__ == "__main__":
    main()
