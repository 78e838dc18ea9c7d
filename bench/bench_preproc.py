"""Benchmark the participant preprocessing on a phantom cohort with known truth.

Usage: python bench/bench_preproc.py [--workdir /tmp/petsynth-bench] [--n 4] [--seed 11]
       [--voxel-size 1] [-- extra petsynth options, e.g. --sloppy]

For each subject: wall time and peak memory of `petsynth ... participant` (one process:
--nprocs 1, so the peak RSS of that process is the peak of the run), brain-mask Dice vs
truth, GM Dice after registration (truth GM warped to MNI with the estimated transform vs
the template GM, both > 0.5), PET->T1w coregistration error in mm (mean displacement over
the truth brain mask between estimated and true rigid transforms). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def run_subject(bids: Path, out: Path, work: Path, label: str, extra: list[str]) -> dict:
    cmd = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "pet_synth_app.cli.run",
        str(bids),
        str(out),
        "participant",
        "--participant-label",
        label,
        "-w",
        str(work),
        "--nprocs",
        "1",
        "--omp-nthreads",
        "2",
        *extra,
    ]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(f"sub-{label} failed:\n{res.stderr[-3000:]}")
    rss_kb = next(
        int(ln.split(":")[1])
        for ln in res.stderr.splitlines()
        if "Maximum resident set size" in ln
    )
    return {"wall_s": wall, "peak_gb": rss_kb / 1024**2}


def metrics(bids: Path, out: Path, label: str) -> dict:
    from nilearn.datasets import load_mni152_gm_template

    from pet_synth_app import layout as L
    from pet_synth_app.preproc.anat import apply_transforms
    from pet_synth_app.preproc.pet import displacement_error_mm, read_ants_rigid
    from pet_synth_app.preproc.templates import get_template

    sub = f"sub-{label}"
    truth = bids / "derivatives" / "truth" / sub
    res = {}
    tmask = nib.load(truth / "anat" / L.truth_filename(sub, "brain_mask"))
    omask = nib.load(L.path(out / sub, sub, "mask"))
    res["mask_dice"] = dice(np.asarray(tmask.dataobj) > 0, np.asarray(omask.dataobj) > 0)
    res["brain_ml"] = float(
        (np.asarray(omask.dataobj) > 0).sum() * np.prod(omask.header.get_zooms()[:3]) / 1000
    )
    tgm = nib.load(truth / "anat" / L.truth_filename(sub, "probseg", "GM"))
    ref = get_template("T1w", 2)
    xfm = str(L.path(out / sub, sub, "t1w2std_xfm"))
    gm_std = apply_transforms(tgm, ref, [xfm], interpolation="linear")
    tpl_gm = load_mni152_gm_template(resolution=2)
    res["gm_dice"] = dice(np.asarray(gm_std.dataobj) > 0.5, tpl_gm.get_fdata() > 0.5)
    ogm = nib.load(L.path(out / sub, sub, "gm"))
    res["seg_gm_dice"] = dice(np.asarray(ogm.dataobj) > 0.5, np.asarray(tgm.dataobj) > 0.5)
    geo = json.loads((truth / f"{sub}_geometry.json").read_text())
    pet_xfm = sorted((out / sub / "pet").glob(L.pattern("pet2t1w_xfm")))
    if pet_xfm and "pet_from_t1w" in geo:
        est = read_ants_rigid(str(pet_xfm[0]))  # maps T1w (fixed) -> PET (moving) world
        frames = [np.asarray(m) for m in geo.get("pet_frames_from_t1w", [geo["pet_from_t1w"]])]
        res["coreg_err_mm"] = displacement_error_mm(est, np.asarray(geo["pet_from_t1w"]), tmask)
        res["n_frames"] = len(frames)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/petsynth-bench"))
    parser.add_argument("--n", type=int, default=4, help="subjects (half patients)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--voxel-size", default="1")
    parser.add_argument("--keep", action="store_true", help="reuse an existing cohort/outputs")
    parser.add_argument("extra", nargs="*", help="extra petsynth options (after --)")
    args = parser.parse_args()
    bids, out, work = (args.workdir / d for d in ("bids", "out", "work"))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
        n_pat = args.n // 2
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pet_synth_app.cli.simulate",
                str(bids),
                "--n-controls",
                str(args.n - n_pat),
                "--n-patients",
                str(n_pat),
                "--seed",
                str(args.seed),
                "--voxel-size",
                args.voxel_size,
                "--n-t1w-only",
                "0",
                "--n-fov-cut",
                "0",
                "--quiet",
            ],
            check=True,
        )
    labels = sorted(p.name[4:] for p in bids.glob("sub-*"))
    rows = []
    for label in labels:
        perf = run_subject(bids, out, work, label, args.extra)
        rows.append({"subject": label, **perf, **metrics(bids, out, label)})
        print(json.dumps(rows[-1]), flush=True)
    cols = [
        "subject",
        "wall_s",
        "peak_gb",
        "brain_ml",
        "mask_dice",
        "seg_gm_dice",
        "gm_dice",
        "coreg_err_mm",
        "n_frames",
    ]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    keys = [c for c in cols[1:] if all(isinstance(r.get(c), float) for r in rows)]
    print(
        "| mean | "
        + " | ".join(
            _fmt(float(np.mean([r[c] for r in rows]))) if c in keys else "" for c in cols[1:]
        )
        + " |"
    )
    return 0


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
