"""Model uncertainty from diffusion samples (issue 15): SD map and its effect on Z.

Usage: python bench/bench_uncertainty.py DERIV --weights W --subjects c11 c12
       [--samples 4] [--seed 0] [--threads 2] [--json out.json]

For each participant (a control: every suprathreshold voxel is a false positive) the
pseudo-normal PET is drawn ``--samples`` times (``synthesis.inference.synthesize_samples``,
seeds ``seed + i``); the mean and the SD map are taken to MNI (affine-space models: the
participant's affine->MNI warp, as the workflow). Reported: wall time per sample, the SD
inside the brain (minimum, median; the map must be zero-free there), and the fraction of
GM voxels (GM probability > 0.5, in the brain mask) with a self-referenced Z below
``Z_THRESHOLD``, without and with the model variance in the denominator
(``analysis.zscore.self_referenced_z(..., model_sd=...)``). Sensitivity needs patients
with known lesions and is not measured here.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_synthesis import _array, load_mni, warp_to_mni  # noqa: E402

from pet_synth_app.analysis.zscore import residual, self_referenced_z  # noqa: E402
from pet_synth_app.config import Z_THRESHOLD  # noqa: E402
from pet_synth_app.layout import find_inputs  # noqa: E402
from pet_synth_app.synthesis.inference import synthesize_samples  # noqa: E402
from pet_synth_app.synthesis.inputs import InputSources, input_space  # noqa: E402
from pet_synth_app.threads import thread_limits  # noqa: E402


def run_subject(deriv: Path, subject: str, weights: Path, n: int, seed: int, threads: int):
    sources = InputSources(**find_inputs(deriv, subject))
    t0 = time.perf_counter()
    mean, sd, meta = synthesize_samples(sources, weights, n, seed=seed, nthreads=threads)
    seconds = time.perf_counter() - t0
    mean_a, sd_a = _array(mean), _array(sd)
    if input_space(meta["InputRepresentation"]) == "affine":
        mean_a, sd_a = warp_to_mni([mean_a, sd_a], sources)
    ref = load_mni(deriv, subject)
    mask, gm = ref["mask"], ref["gm"]
    gm_in = (gm > 0.5) & mask
    d = residual(ref["pet"], mean_a, mask)
    gm_w = np.where(mask, gm, 0.0)
    z0 = self_referenced_z(d, gm_w, mask)
    z1 = self_referenced_z(d, gm_w, mask, np.where(mask, sd_a, 0.0))
    inner = mask & (ref["pet"] > 0)
    return {
        "subject": subject,
        "samples": n,
        "seeds": meta["SampleSeeds"],
        "seconds_per_sample": round(seconds / n, 1),
        "sd_min_in_brain": float(sd_a[inner].min()),
        "sd_median_in_brain": float(np.median(sd_a[inner])),
        "sd_zero_fraction_in_brain": float((sd_a[inner] <= 0).mean()),
        "sd_zero_fraction_in_gm": float((sd_a[gm_in] <= 0).mean()),
        "pseudo_zero_fraction_in_brain": float((mean_a[inner] <= 0).mean()),
        "residual_sd_gm": float(d[gm_in].std()),
        "fp_fraction_gm": float((z0[gm_in] < Z_THRESHOLD).mean()),
        "fp_fraction_gm_model_variance": float((z1[gm_in] < Z_THRESHOLD).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("deriv", type=Path)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    opts = p.parse_args(argv)
    rows = []
    with thread_limits(opts.threads):
        for s in opts.subjects:
            rows.append(
                run_subject(opts.deriv, s, opts.weights, opts.samples, opts.seed, opts.threads)
            )
            print(json.dumps(rows[-1]), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps({"peak_rss_gb": round(peak, 2)}))
    if opts.json:
        opts.json.write_text(json.dumps({"rows": rows, "peak_rss_gb": peak}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
