"""Benchmark the group-level fit of the OC-SVM anomaly detector on 75 phantom controls.

Usage:
  python bench/bench_groupfit.py make CACHE --resolution 2 [--n-real 35 --n-synthetic 40]
  python bench/bench_groupfit.py fit CACHE --resolution 2 [--threads 2] [--json out.json]
  python bench/bench_groupfit.py group CACHE --resolution 2 --work DIR [--threads 2]
                                       [--detector-only]

Input: SIMULATED arrays already in MNI space (no preprocessing; preprocessing 75
subjects would take hours here). ``make`` draws each control with the project's
phantom generator (``simulate.phantom``: random anatomy, atrophy, morphometry, FDG
uptake pattern and regional metabolism, PSF blur and noise) directly on the
MNI152NLin2009aSym template grid of ``--resolution`` mm, SUVR-normalised by its GM
mean; the "real" controls are those phantom PETs, the "synthetic" controls are the
pseudo-normal PET that the shipped synthesis model predicts from the phantom's MNI T1w
(``synthesis.inference.synthesize_pet``), as in Zotova et al.'s hybrid database (35
real + 40 synthetic). One extra real phantom is the held-out test PET. Arrays are
cached as ``.npy`` in CACHE.

``fit`` runs the real group-level code path, ``analysis.anomaly.fit`` (scaling,
siamese autoencoder training, encoding of every control at every model voxel, one
OC-SVM per voxel, saving), with the group-level defaults (``config.py``), and reports
wall time per phase, the process's peak RSS (``ru_maxrss``, the cached arrays
included) and the load average before and after. Agreement: on ``--check-voxels``
random model voxels, scikit-learn's ``OneClassSVM`` is fitted on the same latents
(re-encoded with the saved autoencoder) and its decision values on the held-out
control and on 3 training controls are compared with the saved model's (Pearson r,
max |difference|).

``group`` runs the whole group level end to end (``petsynth BIDS OUT group``: quality
table, normative model, leave-one-out cluster null, OC-SVM detector) in a subprocess on
the 75 training arrays written as a fake participant-level output in ``--work``
(``write_outputs``: per control the MNI SUVR PET, a pseudo-normal PET, brain mask,
template GM probability and full coverage mask under their BIDS derivative names; the
pseudo-normal PET is the PET smoothed and scaled, a stand-in: only sizes matter here).
It reports wall time, CPU seconds (children's user + system after the run, and sampled
ticks), peak RSS of the process tree (sampled from /proc every 0.25 s, and the child's
``ru_maxrss``), per-phase times from the log and the load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


# ------------------------------------------------------------------ phantoms
def _crop_to_template(space, data: np.ndarray, template) -> np.ndarray:
    """Work-grid array -> the template grid (the work grid is the padded template)."""
    off = np.linalg.solve(space.affine, template.affine[:, 3])[:3]
    lo = np.rint(off).astype(int)
    if not np.allclose(off, lo, atol=1e-3) or np.any(lo < 0):
        raise ValueError("the phantom work grid is not a padding of the template grid")
    sl = tuple(slice(a, a + n) for a, n in zip(lo, template.shape[:3], strict=True))
    return np.ascontiguousarray(data[sl])


def make_control(rng: np.random.Generator, resolution: int) -> dict[str, np.ndarray]:
    """One phantom control on the template grid: SUVR PET, [0, 1] T1w, brain mask."""
    from scipy import ndimage

    from pet_synth_app.preproc.templates import get_template
    from pet_synth_app.simulate import phantom as ph

    template = ph.load_template_space(resolution)
    grid = get_template("GM", resolution)
    age = float(rng.uniform(*ph.AGE_RANGE))
    space, anat = ph.random_subject_anatomy(rng, template, age)
    uptake = ph.random_uptake(rng)
    uptake.update(ph.age_uptake(age))
    layers = ph.head_layers(rng, space, anat)
    t1 = ph.t1w_template_image(space, anat, layers)
    act = ph.pet_activity_mni(rng, space, uptake, anat, layers)
    sigma = uptake["psf_fwhm_mm"] / (2 * np.sqrt(2 * np.log(2))) / resolution
    pet = ndimage.gaussian_filter(act, sigma)
    pet = pet * (1 + uptake["noise"] * rng.standard_normal(pet.shape, dtype=np.float32))
    pet = ndimage.gaussian_filter(pet, 1.0 / resolution)  # reconstruction smoothing
    mask = _crop_to_template(space, space.brain, grid) > 0.5
    gm = _crop_to_template(space, space.gm, grid)
    pet = _crop_to_template(space, pet, grid)
    pet = np.where(mask, pet / pet[mask & (gm > 0.5)].mean(), 0).astype(np.float32)
    t1 = _crop_to_template(space, t1, grid)
    lo, hi = np.percentile(t1[mask], [0.5, 99.5])
    t1 = np.where(mask, np.clip((t1 - lo) / (hi - lo), 0, 1), 0).astype(np.float32)
    return {"pet": pet, "t1w": t1, "mask": mask}


def make(
    cache: Path,
    resolution: int,
    n_real: int,
    n_synthetic: int,
    seed: int,
    synthetic_from: Path | None = None,
) -> None:
    import nibabel as nib

    from pet_synth_app.preproc.templates import get_template
    from pet_synth_app.synthesis.inference import synthesize_pet
    from pet_synth_app.synthesis.weights import default_weights

    cache.mkdir(parents=True, exist_ok=True)
    affine = get_template("GM", resolution).affine
    names = [f"real{i:02d}" for i in range(n_real + 1)]  # the last one is held out
    names += [f"syn{i:02d}" for i in range(n_synthetic)]
    for i, name in enumerate(names):
        if (cache / f"{name}_pet.npy").is_file():
            continue
        t0 = time.time()
        if name.startswith("syn") and synthetic_from is not None:
            pet, mask = upsampled(synthetic_from / f"{name}_pet.npy", resolution)
            np.save(cache / f"{name}_mask.npy", mask)
            np.save(cache / f"{name}_pet.npy", pet)
            print(f"{name}: {time.time() - t0:.1f} s (from {synthetic_from})", flush=True)
            continue
        c = make_control(np.random.default_rng([seed, i]), resolution)
        pet = c["pet"]
        if name.startswith("syn"):
            img, _ = synthesize_pet(
                nib.Nifti1Image(c["t1w"], affine),
                nib.Nifti1Image(c["mask"].astype(np.uint8), affine),
                default_weights(),
                nthreads=1,
            )
            pet = np.asanyarray(img.dataobj, dtype=np.float32)
        np.save(cache / f"{name}_mask.npy", c["mask"])
        np.save(cache / f"{name}_pet.tmp.npy", pet)
        os.replace(cache / f"{name}_pet.tmp.npy", cache / f"{name}_pet.npy")
        print(f"{name}: {time.time() - t0:.1f} s", flush=True)
    (cache / "names.json").write_text(
        json.dumps({"train": names[:n_real] + names[n_real + 1 :], "held_out": names[n_real]})
    )


def upsampled(path: Path, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """A 2 mm pseudo-normal PET (``.npy`` on the 2 mm template grid) resampled (linear)
    to the ``resolution`` mm template grid, and the template brain mask there. This is
    what ``synthesize_pet`` does with a 1 mm input: the 2 mm model predicts on its own
    grid and the result is resampled to the input's."""
    import nibabel as nib

    from pet_synth_app.preproc.templates import get_template
    from pet_synth_app.synthesis.inference import _resample_to

    src = nib.Nifti1Image(np.load(path), get_template("GM", 2).affine)
    ref = get_template("GM", resolution)
    mask = np.asanyarray(get_template("mask", resolution).dataobj) > 0
    pet = np.asanyarray(_resample_to(src, ref, 1).dataobj, dtype=np.float32)
    return np.where(mask, pet, 0).astype(np.float32), mask


# ------------------------------------------------------------------ fit
def fit(cache: Path, resolution: int, threads: int, check_voxels: int, out: Path) -> dict:
    from pet_synth_app.analysis import anomaly, ocsvm, siamese
    from pet_synth_app.config import OCSVM_GAMMA, OCSVM_NU, SIAMESE_EPOCHS
    from pet_synth_app.preproc.templates import get_template

    load_before = os.getloadavg()
    names = json.loads((cache / "names.json").read_text())
    t0 = time.time()
    pets = [np.load(cache / f"{n}_pet.npy") for n in names["train"]]
    masks = [np.load(cache / f"{n}_mask.npy") for n in names["train"]]
    t_load = time.time() - t0
    rss_loaded = _rss_gb()
    gm_img = get_template("GM", resolution)
    res = anomaly.fit(
        pets,
        masks,
        np.asanyarray(gm_img.dataobj),
        gm_img.affine,
        out,
        nu=OCSVM_NU,
        gamma=OCSVM_GAMMA,
        epochs=SIAMESE_EPOCHS,
        seed=0,
        threads=threads,
    )
    rss_fit = _rss_gb()
    load_after = os.getloadavg()
    row = {
        "resolution_mm": resolution,
        "n_controls": len(pets),
        "n_voxels": res.n_voxels,
        "threads": threads,
        "seconds": {
            "load_arrays": round(t_load, 1),
            **{k: round(v, 1) for k, v in res.seconds.items()},
        },
        "cpu_seconds": {k: round(v, 1) for k, v in res.cpu_seconds.items()},
        "fit_seconds_total": round(sum(res.seconds.values()), 1),
        "fit_cpu_seconds_total": round(sum(res.cpu_seconds.values()), 1),
        "peak_rss_gb_arrays_loaded": round(rss_loaded, 2),
        "peak_rss_gb": round(rss_fit, 2),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }
    print(json.dumps(row), flush=True)
    # agreement with scikit-learn on a subset of voxels
    from sklearn.svm import OneClassSVM

    ae, _ = siamese.load_autoencoder(out / anomaly.AE_FILE)
    model = ocsvm.load_model(out, lazy=False)
    rng = np.random.default_rng(1)
    pick = np.sort(rng.choice(model.n_voxels, min(check_voxels, model.n_voxels), replace=False))
    sub = np.zeros(model.shape, bool)
    sub[tuple(model.ijk[pick].T)] = True  # np.argwhere order == model order (sorted ijk)
    held = np.load(cache / f"{names['held_out']}_pet.npy")
    held_mask = np.load(cache / f"{names['held_out']}_mask.npy")
    stack = siamese.patch_stack(
        (siamese.scale_unit(p, m) for p, m in zip(pets, masks, strict=True)), sub, count=len(pets)
    )
    lat = siamese.encode_stack(ae, stack, slice(None))  # (n, k, d)
    test = [siamese.encode_volume(ae, siamese.scale_unit(held, held_mask), sub)]
    test += [lat[j] for j in (0, len(pets) // 2, len(pets) - 1)]
    ours, ref = [], []
    for z in test:
        ours.append(
            ocsvm.decision_batched(
                model.alpha[pick], model.rho[pick], model.gamma[pick], model.sv[pick], z
            )
        )
    t_sk = time.time()
    for v in range(len(pick)):
        clf = OneClassSVM(nu=OCSVM_NU, gamma=OCSVM_GAMMA).fit(lat[:, v].astype(np.float64))
        ref.append(clf.decision_function(np.stack([z[v] for z in test]).astype(np.float64)))
    t_sk = time.time() - t_sk
    ours_a = np.stack(ours, 1).ravel()
    ref_a = np.stack(ref).ravel()
    agree = {
        "check_voxels": int(len(pick)),
        "decision_values": int(ref_a.size),
        "pearson_r_vs_sklearn": float(np.corrcoef(ours_a, ref_a)[0, 1]),
        "max_abs_diff": float(np.abs(ours_a - ref_a).max()),
        "decision_range": float(np.ptp(ref_a)),
        "sklearn_ms_per_voxel": round(1000 * t_sk / len(pick), 2),
    }
    print(json.dumps(agree), flush=True)
    return {**row, "agreement": agree}


# ------------------------------------------------------------------ group level
def write_outputs(cache: Path, resolution: int, work: Path) -> tuple[Path, Path]:
    """The cached training arrays as a BIDS folder (``work/bids``: participants.tsv, all
    controls) and a finished participant-level output (``work/out``); returns both."""
    import nibabel as nib
    from scipy import ndimage

    from pet_synth_app.config import TEMPLATE_SPACE
    from pet_synth_app.layout import path, sidecar
    from pet_synth_app.preproc.templates import get_template

    names = json.loads((cache / "names.json").read_text())["train"]
    bids, out = work / "bids", work / "out"
    gm = get_template("GM", resolution)
    affine = gm.affine
    gm_data = np.asanyarray(gm.dataobj, dtype=np.float32)
    for folder in (bids, out):
        folder.mkdir(parents=True, exist_ok=True)
        desc = {"Name": "bench_groupfit", "BIDSVersion": "1.9.0"}
        if folder == out:
            desc["DatasetType"] = "derivative"
        (folder / "dataset_description.json").write_text(json.dumps(desc))
    rows = ["participant_id\tgroup"] + [f"sub-{n}\tcontrol" for n in names]
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")

    def save(data: np.ndarray, file: Path, side: dict | None = None) -> None:
        file.parent.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.to_filename(str(file))
        if side is not None:
            sidecar(file).write_text(json.dumps(side))

    for name in names:
        unit, stem = out / f"sub-{name}", f"sub-{name}"
        if (out / f"{stem}.html").is_file():
            continue
        pet = np.load(cache / f"{name}_pet.npy").astype(np.float32)
        mask = np.load(cache / f"{name}_mask.npy")
        pseudo = np.where(mask, 0.97 * ndimage.gaussian_filter(pet, 1.5), 0).astype(np.float32)
        series = f"{stem}_trc-FDG"
        save(mask.astype(np.uint8), path(unit, stem, "mask", TEMPLATE_SPACE))
        save(gm_data, path(unit, stem, "gm", TEMPLATE_SPACE))
        save(pet, path(unit, series, "pet", TEMPLATE_SPACE), {"Units": "SUVR"})
        save(pseudo, path(unit, stem, "pseudo", TEMPLATE_SPACE), {"ModelWeightsSha256": "b"})
        save(np.ones(mask.shape, np.uint8), path(unit, series, "coverage", TEMPLATE_SPACE))
        (out / f"{stem}.html").write_text("<html></html>\n")
    return bids, out


_DETECTOR_ONLY = """
import sys
import pet_synth_app.group as g
g.image_metrics = lambda *a, **k: dict.fromkeys(("ssim", "ssim_2d", "psnr", "rmse", "mae"), 0.0)
g._write_cluster_null = lambda *a, **k: None
from pet_synth_app.cli.run import main
sys.exit(main(sys.argv[1:]))
"""


def group(
    cache: Path, resolution: int, threads: int, work: Path, detector_only: bool = False
) -> dict:
    """Run ``petsynth BIDS OUT group`` on the fake outputs of ``write_outputs`` and
    measure it (module docstring). ``detector_only``: the same run with the quality
    metrics and the cluster null replaced by no-ops (to reach the OC-SVM phase, the
    memory peak, sooner on a slow machine; a partial measurement)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_cohort import TICK, Monitor

    t0 = time.time()
    bids, out = write_outputs(cache, resolution, work)
    t_write = time.time() - t0
    shutil.rmtree(out / "group", ignore_errors=True)
    log = work / "group.log"
    run = ["-c", _DETECTOR_ONLY] if detector_only else ["-m", "pet_synth_app.cli.run"]
    cmd = [sys.executable, *run, str(bids), str(out), "group"]
    cmd += ["--mni-resolution", str(resolution), "--omp-nthreads", str(threads)]
    cmd += ["--skip-bids-validation", "-v"]
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        mon = Monitor(proc.pid)
        mon.start()
        code = proc.wait()
        mon.stop.set()
        mon.join()
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    phases = [
        line.strip()
        for line in log.read_text().splitlines()
        if re.search(r"group: |OC-SVM fit: |group report", line)
    ]
    row = {
        "resolution_mm": resolution,
        "n_controls": len(json.loads((cache / "names.json").read_text())["train"]),
        "threads": threads,
        "detector_only": detector_only,
        "exit_code": code,
        "write_outputs_s": round(t_write, 1),
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "cpu_s_sampled": round(mon.ticks / TICK, 1),
        "peak_rss_gb_sampled": round(mon.peak_rss / 2**30, 2),
        "peak_rss_gb_child_maxrss": round(after.ru_maxrss / 2**20, 2),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "phases": phases,
        "command": " ".join(c if c != _DETECTOR_ONLY else "<detector-only stub>" for c in cmd),
    }
    print(json.dumps(row, indent=1), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("make", "fit", "group"))
    p.add_argument("cache", type=Path)
    p.add_argument("--resolution", type=int, choices=(1, 2), default=2)
    p.add_argument("--n-real", type=int, default=35)
    p.add_argument("--n-synthetic", type=int, default=40)
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--check-voxels", type=int, default=500)
    p.add_argument("--out", type=Path, default=None, help="detector folder (default CACHE/fit)")
    p.add_argument(
        "--synthetic-from",
        type=Path,
        default=None,
        help="make: take the synthetic controls from this 2 mm cache, resampled",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None, help="group: fake BIDS + outputs here")
    p.add_argument(
        "--detector-only",
        action="store_true",
        help="group: no quality metrics and no cluster null (reach the OC-SVM phase sooner)",
    )
    o = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if o.command == "make":
        make(o.cache, o.resolution, o.n_real, o.n_synthetic, o.seed, o.synthetic_from)
        return 0
    if o.command == "group":
        if o.work is None:
            p.error("group needs --work DIR")
        res = group(o.cache, o.resolution, o.threads, o.work, o.detector_only)
        if o.json:
            o.json.write_text(json.dumps(res, indent=1))
        return 0 if res["exit_code"] == 0 else 1
    res = fit(o.cache, o.resolution, o.threads, o.check_voxels, o.out or o.cache / "fit")
    if o.json:
        o.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
