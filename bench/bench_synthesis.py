"""Benchmark pseudo-normal PET synthesis: quality on held-out controls and CPU throughput.

Usage: python bench/bench_synthesis.py DERIV [--weights W] [--test c13 c14 ...]
       [--baseline c01 c02 ...] [--loo-pool c01 c02 ...] [--noise-free TWIN_DERIV]
       [--oracle ANATOMY_TWIN_DERIV]
       [--threads 2] [--json out.json]

DERIV is a PetSynth output folder (participant level: the files of every listed
participant that the model's input representation needs, ``synthesis.inputs``, and the
MNI-space brain mask, GM probability and SUVR PET).

Quality, always scored in MNI space: for each held-out control (by default the controls
with PET that the model card names neither as training nor as validation participants),
the pseudo-normal PET is synthesized through ``synthesize_from_sources`` in the card's
input representation; a pseudo-PET in affine space (``"affine"`` models) is taken to MNI
with the participant's affine->MNI warp of the derivatives through
``preproc.anat.apply_transforms``, exactly as the workflow's ``pseudo_to_std`` node does.
It is compared with the real MNI SUVR PET inside the MNI brain mask (SSIM 3D and
slice-wise, PSNR, RMSE, MAE on the [0, 1]-scaled pair, ``analysis.metrics.image_metrics``).

Baselines (no synthesis, masked the same way): the *leave-one-out mean control PET* (the
mean MNI SUVR PET of every control with PET in DERIV except the tested one; controls are
the participants whose label starts with ``c``; ``--loo-pool`` restricts the pool) and the
mean PET of the model's training controls (``--baseline`` overrides them).

Deviation from the mean (issue 14): the voxelwise Pearson correlation, inside the GM
(the participant's own MNI GM probability > 0.5, within the brain mask), between
(pseudo - LOO mean) and (true noise-free PET - LOO mean), the noise-free PET being the
subject's twin in ``--noise-free`` (``bench/noise_free_twin.py``); also against the real
(noisy) PET's deviation. Ceiling (``--noise-free``): the twin's PET scored like a
prediction (a perfect prediction of everything but the PET noise). Anatomy ceiling
(``--oracle``): the subject's anatomy-only twin (``noise_free_twin.py --anatomy-only``:
every metabolic parameter no T1w shows at its population mean, noise-free) scored like a
prediction: about the best any T1w (+ age) model can do.

Throughput: the generator on the first test participant's model input (all channels of
the representation), wall time, and the FLOPs of that whole prediction counted with
torch's FlopCounterMode (so the channel count, priors and patches are the real ones),
against the measured peak of a 4096^2 float32 matmul.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from pet_synth_app.analysis.metrics import image_metrics
from pet_synth_app.layout import find_mni
from pet_synth_app.synthesis.inference import predict_with_config, synthesize_from_sources
from pet_synth_app.synthesis.inputs import (
    InputSources,
    build_model_input,
    card_representation,
    input_space,
    sources_from_derivatives,
)
from pet_synth_app.synthesis.weights import default_weights, load_generator, read_card

METRICS = ("ssim", "ssim_2d", "psnr", "rmse", "mae")
GM_THRESHOLD = 0.5
GM_REGION = f"the participant's MNI GM probability > {GM_THRESHOLD:g} inside the MNI brain mask"


# ------------------------------------------------------------------ MNI-space data
def _array(path) -> np.ndarray:
    img = path if isinstance(path, nib.Nifti1Image) else nib.load(str(path))
    return np.nan_to_num(np.asanyarray(nib.squeeze_image(img).dataobj, dtype=np.float32))


def load_mni(deriv: Path, subject: str, need_pet: bool = True) -> dict:
    """A participant's MNI-space SUVR PET, brain mask (bool), GM probability and the
    grid's voxel size (mm)."""
    f = find_mni(deriv, subject)
    roles = ("mask", "gm", "pet") if need_pet else ("mask", "gm")
    missing = [r for r in roles if f[r] is None]
    if missing:
        raise SystemExit(f"{subject}: no MNI-space {'/'.join(missing)} in {deriv}")
    mask = nib.load(str(f["mask"]))
    return {
        "pet": _array(f["pet"]) if f["pet"] else None,
        "mask": _array(mask) > 0,
        "gm": _array(f["gm"]),
        "voxel_mm": float(abs(mask.affine[0, 0])),
    }


def subjects_with_pet(deriv: Path, prefix: str = "c") -> list[str]:
    """Participants of ``deriv`` whose label starts with ``prefix`` and that have an MNI PET."""
    labels = sorted(d.name[4:] for d in Path(deriv).glob("sub-*") if d.is_dir())
    return [s for s in labels if s.startswith(prefix) and find_mni(deriv, s)["pet"]]


def control_pets(deriv: Path, subjects: list[str]) -> dict[str, np.ndarray]:
    """MNI SUVR PET of each listed participant."""
    return {s: load_mni(deriv, s)["pet"] for s in subjects}


def loo_mean(pets: dict[str, np.ndarray], subject: str) -> np.ndarray:
    """Mean of every PET in ``pets`` except ``subject``'s (the leave-one-out mean)."""
    others = [v for k, v in pets.items() if k != subject]
    if not others:
        raise SystemExit(f"{subject}: no other control PET for the leave-one-out mean")
    return np.mean(others, 0, dtype=np.float64).astype(np.float32)


def gm_region(gm: np.ndarray, mask: np.ndarray, threshold: float = GM_THRESHOLD) -> np.ndarray:
    """GM voxels of the deviation correlation: GM probability > ``threshold`` in the mask."""
    return (gm > threshold) & mask


def deviation_r(
    pred: np.ndarray, truth: np.ndarray, reference: np.ndarray, region: np.ndarray
) -> float:
    """Pearson r over ``region`` between (pred - reference) and (truth - reference);
    NaN when either deviation is constant there."""
    a = (pred - reference)[region].astype(np.float64)
    b = (truth - reference)[region].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def warp_to_mni(vols: list[np.ndarray], sources: InputSources) -> list[np.ndarray]:
    """Affine-space volumes (MNI grid) taken to MNI with the participant's affine->MNI
    warp (``sources.warp``), as the workflow's ``pseudo_to_std``: ``apply_transforms``
    onto the MNI brain mask grid, linear interpolation, one call for all volumes."""
    from pet_synth_app.preproc.anat import apply_transforms

    sources.need("warp", "mask_std", why="taking an affine-space prediction to MNI")
    ref = nib.squeeze_image(
        sources.mask_std
        if isinstance(sources.mask_std, nib.Nifti1Image)
        else nib.load(str(sources.mask_std))
    )
    stack = np.stack([np.asarray(v, np.float32) for v in vols], -1)
    img = nib.Nifti1Image(stack if len(vols) > 1 else stack[..., 0], ref.affine)
    out = apply_transforms(img, ref, [str(sources.warp)])
    data = np.asanyarray(out.dataobj, dtype=np.float32)
    if len(vols) == 1:
        return [data.reshape(ref.shape[:3])]
    return [np.ascontiguousarray(data[..., i]) for i in range(len(vols))]


def synthesize_mni(
    sources: InputSources, weights: Path, threads: int = 1
) -> tuple[np.ndarray, dict, float]:
    """Pseudo-PET in MNI space (array), its metadata and the seconds it took (synthesis
    and, for an affine-space model, the warp to MNI)."""
    t0 = time.perf_counter()
    pseudo, meta = synthesize_from_sources(sources, weights, nthreads=threads)
    data = _array(pseudo)
    if input_space(meta["InputRepresentation"]) == "affine":
        data = warp_to_mni([data], sources)[0]
        meta = {**meta, "WarpedToMNI": str(sources.warp)}
    return data, meta, time.perf_counter() - t0


# ------------------------------------------------------------------ scoring
def twin_pet(deriv: Path, subject: str) -> np.ndarray:
    """The MNI SUVR PET of ``subject`` in a twin cohort's derivatives."""
    path = find_mni(deriv, subject)["pet"]
    if path is None:
        raise SystemExit(f"{subject}: no MNI-space PET in {deriv}")
    return _array(path)


def score_subject(
    pred: np.ndarray,
    real: dict,
    loo: np.ndarray,
    clean: np.ndarray | None = None,
) -> dict[str, float]:
    """image_metrics of ``pred`` (masked) against the real MNI PET in the brain mask, and
    the GM deviation correlations against the real and the noise-free PET (vs ``loo``)."""
    m = real["mask"]
    out = image_metrics(pred * m, real["pet"], m)
    region = gm_region(real["gm"], m)
    out["r_real"] = deviation_r(pred, real["pet"], loo, region)
    if clean is not None:
        out["r_clean"] = deviation_r(pred, clean, loo, region)
    return out


def summarize(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """Mean and population SD of every key of the per-subject score dicts, NaNs left
    out (an infinite PSNR, a perfect prediction, gives an infinite mean and a NaN SD)."""
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows], np.float64)
        vals = vals[~np.isnan(vals)]
        if not vals.size:
            out[k] = (math.nan, math.nan)
        elif np.isfinite(vals).all():
            out[k] = (float(vals.mean()), float(vals.std()))
        else:
            out[k] = (float(vals.mean()), math.nan)
    return out


def _fmt(v: tuple[float, float] | None) -> str:
    if v is None or math.isnan(v[0]):
        return "n/a"
    return f"{v[0]:.4f} ± {v[1]:.4f}"


def markdown_table(columns: dict[str, dict]) -> str:
    """Metric rows x method columns (mean ± SD), then the GM deviation correlations."""
    labels = {
        "ssim": "SSIM (3D)",
        "ssim_2d": "SSIM (2D)",
        "psnr": "PSNR (dB)",
        "rmse": "RMSE",
        "mae": "MAE",
        "r_clean": "GM r(pred − LOO, noise-free − LOO)",
        "r_real": "GM r(pred − LOO, real − LOO)",
    }
    lines = [
        "| metric | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key, label in labels.items():
        if not any(key in c for c in columns.values()):
            continue
        lines.append(
            f"| {label} | " + " | ".join(_fmt(c.get(key)) for c in columns.values()) + " |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ throughput
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


def throughput(weights: Path, channels: np.ndarray) -> dict:
    """Wall time, GFLOP and GFLOP/s of the generator on one model input (C, x, y, z):
    the FLOPs of the whole prediction, so every input channel (and prior) counts."""
    from torch.utils.flop_counter import FlopCounterMode

    generator, card = load_generator(weights)
    config = card["config"]
    model_in = channels[0] if len(channels) == 1 else channels
    with torch.inference_mode():
        predict_with_config(model_in, generator, config)  # warm-up
        t0 = time.perf_counter()
        predict_with_config(model_in, generator, config)
        wall = time.perf_counter() - t0
        with FlopCounterMode(display=False) as counter:
            predict_with_config(model_in, generator, config)
    gflop = counter.get_total_flops() / 1e9
    res = {
        "input_channels": int(len(channels)),
        "seconds": wall,
        "gflop_per_volume": gflop,
        "gflops": gflop / wall,
    }
    if int(config["spatial_dims"]) == 2:
        nz = int(channels.shape[-1])  # every axial slice of the grid is predicted
        res.update(slices=nz, slices_per_s=nz / wall, gflop_per_slice=gflop / nz)
    return res


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("deriv", type=Path)
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--test", nargs="+", default=None, help="held-out controls")
    p.add_argument(
        "--baseline",
        nargs="+",
        default=None,
        help="controls whose mean PET is the training-mean baseline (default: the card's)",
    )
    p.add_argument(
        "--loo-pool",
        nargs="+",
        default=None,
        help="controls of the leave-one-out mean (default: every control with PET in DERIV)",
    )
    p.add_argument(
        "--noise-free",
        type=Path,
        default=None,
        help="derivatives of the cohort's noise-free twin (deviation r, ceiling column)",
    )
    p.add_argument(
        "--oracle",
        type=Path,
        default=None,
        help="derivatives of the anatomy-only twin (noise_free_twin.py --anatomy-only): "
        "scored like a prediction (anatomy ceiling column)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    opts = p.parse_args(argv)
    torch.set_num_threads(opts.threads)
    weights = opts.weights or default_weights()
    card = read_card(weights)
    rep = card_representation(card)
    used = set(card["training"]["participants"]) | set(
        card["training"].get("validation_participants", [])
    )
    controls = subjects_with_pet(opts.deriv)
    test = opts.test or [s for s in controls if s not in used]
    if not test:
        raise SystemExit("no held-out control with PET")
    pool = opts.loo_pool or controls
    pets = control_pets(opts.deriv, sorted(set(pool) | set(test)))
    pool_pets = {s: pets[s] for s in pool}
    base = opts.baseline or card["training"]["participants"]
    missing = [s for s in base if not find_mni(opts.deriv, s)["pet"]]
    train_mean = None
    if base and not missing:
        train_mean = np.mean(list(control_pets(opts.deriv, base).values()), 0)
    else:
        print(
            f"training-mean baseline skipped: no MNI PET in {opts.deriv} for "
            f"{', '.join(missing) or 'any training participant'}",
            file=sys.stderr,
        )

    rows = []
    for s in test:
        real = load_mni(opts.deriv, s)
        sources = sources_from_derivatives(opts.deriv, s)
        pseudo, meta, secs = synthesize_mni(sources, weights, opts.threads)
        loo = loo_mean(pool_pets, s)
        clean = twin_pet(opts.noise_free, s) if opts.noise_free else None
        row = {
            "subject": s,
            "seconds": secs,
            "model": score_subject(pseudo, real, loo, clean),
            "loo_mean": score_subject(loo, real, loo, clean),
            "loo_pool_size": len([k for k in pool_pets if k != s]),
        }
        if train_mean is not None:
            row["training_mean"] = score_subject(train_mean, real, loo, clean)
        if clean is not None:
            row["noise_free"] = score_subject(clean, real, loo, clean)
        if opts.oracle:
            row["oracle"] = score_subject(twin_pet(opts.oracle, s), real, loo, clean)
        rows.append(row)
        print(
            f"{s}: {secs:.1f} s; model "
            + " ".join(f"{k} {row['model'][k]:.4f}" for k in row["model"])
            + " | LOO mean "
            + " ".join(f"{k} {row['loo_mean'][k]:.4f}" for k in METRICS),
            file=sys.stderr,
            flush=True,
        )

    kinds = {
        "model": f"{card['model']} ({weights.name}, {rep})",
        "loo_mean": "LOO mean control PET",
        "training_mean": f"training mean ({len(base)} controls)",
        "noise_free": "noise-free twin (ceiling)",
        "oracle": "anatomy-only twin (T1w ceiling)",
    }
    res = {
        "weights": str(weights),
        "sha256": card["sha256"],
        "representation": rep,
        "test": test,
        "loo_pool": list(pool),
        "baseline_controls": list(base),
        "gm_region": GM_REGION,
        "rows": rows,
    }
    columns = {}
    for kind, label in kinds.items():
        if all(kind in r for r in rows):
            res[kind] = summarize([r[kind] for r in rows])
            columns[label] = res[kind]
    res["synthesis_seconds_per_subject"] = statistics.mean(r["seconds"] for r in rows)
    if not opts.no_throughput:
        mi = build_model_input(rep, sources_from_derivatives(opts.deriv, test[0]))
        res["throughput"] = throughput(weights, mi.channels)
        res["matmul_peak_gflops"] = matmul_peak_gflops()

    print(
        f"\nheld-out controls (n={len(test)}): {', '.join(test)}; input representation "
        f"{rep}; scored in MNI space inside the MNI brain mask; LOO mean over "
        f"{len(pool)} controls ({', '.join(pool)}) minus the tested one; GM region of r: "
        f"{GM_REGION}\n"
    )
    print(markdown_table(columns))
    if not opts.noise_free:
        print("\n(no --noise-free: no noise-free r and no ceiling)")
    print(
        f"\nsynthesis {res['synthesis_seconds_per_subject']:.2f} s/subject "
        "(build input, predict, smooth" + (", warp to MNI)" if rep == "affine" else ")")
    )
    if "throughput" in res:
        t, peak = res["throughput"], res["matmul_peak_gflops"]
        per_slice = (
            f"{t['slices_per_s']:.1f} slices/s ({t['slices']} slices), "
            f"{t['gflop_per_slice']:.2f} GFLOP/slice, "
            if "slices" in t
            else ""
        )
        print(
            f"throughput ({opts.threads} thread(s), {t['input_channels']} input channel(s)): "
            f"{per_slice}{t['gflop_per_volume']:.1f} GFLOP/volume in {t['seconds']:.2f} s, "
            f"{t['gflops']:.1f} GFLOP/s = {100 * t['gflops'] / peak:.0f} % of the "
            f"{peak:.0f} GFLOP/s matmul peak"
        )
    if opts.json:
        opts.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
