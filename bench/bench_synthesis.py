"""Benchmark pseudo-normal PET synthesis: quality on held-out controls and CPU throughput.

Usage: python bench/bench_synthesis.py DERIV [--weights W] [--test c13 c14 ...]
       [--baseline c01 c02 ...] [--noise-free TWIN_DERIV] [--threads 2] [--json out.json]

DERIV is a PetSynth output folder (participant level; MNI-space T1w, brain mask and SUVR
PET of every listed participant). Quality: for each held-out control (by default the
controls with PET that the model card names neither as training nor as validation
participants), the pseudo-normal PET is synthesized from the MNI T1w exactly as the
participant workflow does (``synthesize_pet``) and compared with the real SUVR PET inside
the MNI brain mask (SSIM 3D and slice-wise, PSNR, RMSE, MAE on the [0, 1]-scaled pair,
``analysis.metrics.image_metrics``). Baseline: the voxelwise mean SUVR PET of the model's
training controls (no synthesis), masked the same way. Ceiling (``--noise-free``): the
preprocessed SUVR PET of each subject's noise-free twin (``bench/noise_free_twin.py``),
i.e. a perfect prediction of everything but the PET noise. Throughput: slices/s of the
generator on the 2 mm grid, its GFLOP per slice (torch FlopCounterMode) and the achieved
GFLOP/s against the measured peak of a 4096^2 float32 matmul.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from pet_synth_app.analysis.metrics import image_metrics
from pet_synth_app.preproc.anat import normalize_t1_intensity
from pet_synth_app.synthesis.inference import predict_volume, synthesize_pet
from pet_synth_app.synthesis.weights import default_weights, load_generator, read_card
from pet_synth_app.trainer import find_training_files

METRICS = ("ssim", "ssim_2d", "psnr", "rmse", "mae")


def matmul_peak_gflops(n: int = 4096, repeats: int = 5) -> float:
    """Best float32 matmul throughput (GFLOP/s) with the current torch threads."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def throughput(weights: Path, t1w: np.ndarray) -> dict:
    """Slices/s, GFLOP/slice and achieved GFLOP/s of the generator on one volume."""
    from torch.utils.flop_counter import FlopCounterMode

    generator, card = load_generator(weights)
    nz = int((t1w.reshape(-1, t1w.shape[2]) > 0).any(0).sum())
    predict_volume(t1w, generator)  # warm-up
    t0 = time.perf_counter()
    predict_volume(t1w, generator)
    wall = time.perf_counter() - t0
    nx, ny = (np.ptp(np.argwhere(t1w > 0), 0)[:2] + 5 + 3) // 4 * 4
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        first = next(m for m in generator.modules() if isinstance(m, torch.nn.Conv2d))
        generator(torch.zeros(1, first.in_channels, int(nx), int(ny)))  # + prior slices
    gflop = counter.get_total_flops() / 1e9
    return {
        "slices": nz,
        "seconds": wall,
        "slices_per_s": nz / wall,
        "gflop_per_slice": gflop,
        "gflops": gflop * nz / wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("deriv", type=Path)
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--test", nargs="+", default=None, help="held-out controls")
    p.add_argument(
        "--baseline",
        nargs="+",
        default=None,
        help="controls whose mean PET is the baseline (default: training set)",
    )
    p.add_argument(
        "--noise-free",
        type=Path,
        default=None,
        help="derivatives of the cohort's noise-free twin (ceiling row)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    opts = p.parse_args(argv)
    torch.set_num_threads(opts.threads)
    weights = opts.weights or default_weights()
    card = read_card(weights)
    used = set(card["training"]["participants"]) | set(
        card["training"].get("validation_participants", [])
    )
    subjects = sorted(d.name[4:] for d in opts.deriv.glob("sub-*") if d.is_dir())
    test = opts.test or [s for s in subjects if s not in used and s.startswith("c")]
    base = opts.baseline or card["training"]["participants"]

    def load(s):
        f = find_training_files(opts.deriv, s)
        if f is None or f["pet"] is None:
            raise SystemExit(f"{s}: no MNI-space T1w/mask/PET in {opts.deriv}")
        return f

    pets = [np.asanyarray(nib.load(load(s)["pet"]).dataobj, dtype=np.float32) for s in base]
    mean_pet = np.mean(pets, 0)
    rows = []
    for s in test:
        f = load(s)
        t1, mask = nib.load(f["t1w"]), nib.load(f["mask"])
        real = np.asanyarray(nib.load(f["pet"]).dataobj, dtype=np.float32)
        m = np.asanyarray(mask.dataobj) > 0
        t0 = time.perf_counter()
        pseudo, _ = synthesize_pet(
            normalize_t1_intensity(t1, mask), mask, weights, nthreads=opts.threads
        )
        secs = time.perf_counter() - t0
        model = image_metrics(np.asanyarray(pseudo.dataobj), real, m)
        baseline = image_metrics(mean_pet * m, real, m)
        row = {"subject": s, "seconds": secs, "model": model, "baseline": baseline}
        if opts.noise_free:
            twin = find_training_files(opts.noise_free, s)
            if twin is None or twin["pet"] is None:
                raise SystemExit(f"{s}: no MNI-space PET in {opts.noise_free}")
            clean = np.asanyarray(nib.load(twin["pet"]).dataobj, dtype=np.float32)
            row["noise_free"] = image_metrics(clean * m, real, m)
        rows.append(row)
        print(
            f"{s}: model "
            + " ".join(f"{k} {model[k]:.4f}" for k in METRICS)
            + " | mean-PET "
            + " ".join(f"{k} {baseline[k]:.4f}" for k in METRICS)
            + (
                " | noise-free " + " ".join(f"{k} {row['noise_free'][k]:.4f}" for k in METRICS)
                if opts.noise_free
                else ""
            ),
            file=sys.stderr,
        )

    def summary(kind):
        return {
            k: (
                statistics.mean(r[kind][k] for r in rows),
                statistics.pstdev(r[kind][k] for r in rows),
            )
            for k in METRICS
        }

    res = {
        "weights": str(weights),
        "sha256": card["sha256"],
        "test": test,
        "baseline_controls": base,
        "model": summary("model"),
        "baseline": summary("baseline"),
        "rows": rows,
    }
    kinds = [("model", f"{card['model']} ({weights.name})"), ("baseline", "mean control PET")]
    if opts.noise_free:
        res["noise_free"] = summary("noise_free")
        kinds.append(("noise_free", "noise-free twin PET (ceiling)"))
    f = load(test[0])
    t1n = np.asanyarray(normalize_t1_intensity(nib.load(f["t1w"]), nib.load(f["mask"])).dataobj)
    res["throughput"] = throughput(weights, t1n)
    res["matmul_peak_gflops"] = matmul_peak_gflops()
    res["synthesis_seconds_per_subject"] = statistics.mean(r["seconds"] for r in rows)

    print(
        f"\nheld-out controls (n={len(test)}): {', '.join(test)}; baseline = mean SUVR PET "
        f"of {len(base)} training controls\n"
    )
    print("| method | SSIM (3D) | SSIM (2D) | PSNR (dB) | RMSE | MAE |")
    print("|---|---|---|---|---|---|")
    for kind, label in kinds:
        s = res[kind]
        print(
            f"| {label} | " + " | ".join(f"{s[k][0]:.4f} ± {s[k][1]:.4f}" for k in METRICS) + " |"
        )
    t = res["throughput"]
    peak = res["matmul_peak_gflops"]
    print(
        f"\nthroughput ({opts.threads} threads): {t['slices_per_s']:.1f} slices/s "
        f"({t['slices']} slices in {t['seconds']:.2f} s), "
        f"{t['gflop_per_slice']:.2f} GFLOP/slice, {t['gflops']:.1f} GFLOP/s = "
        f"{100 * t['gflops'] / peak:.0f} % of the {peak:.0f} GFLOP/s matmul peak; "
        f"synthesize_pet {res['synthesis_seconds_per_subject']:.2f} s/subject "
        "(load, predict, smooth)"
    )
    if opts.json:
        opts.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
