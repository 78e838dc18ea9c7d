"""Write a noise-free twin of a phantom cohort: the same subjects, PET without noise.

Usage: python bench/noise_free_twin.py OUT_DIR [--anatomy-only] [--only LABEL ...]
                                       [petsynth-simulate options ...]

With the options of the original cohort (same ``--seed``), every subject gets the same
anatomy, T1w, uptake parameters, lesions, PSF and geometry as in the original; only the PET
noise is 0 (``random_uptake`` still draws it, so the random streams stay aligned). The
twin's preprocessed SUVR PET is the best any T1w -> PET model could predict up to the
uptake parameters that the T1w does not determine: ``bench_synthesis.py --noise-free
TWIN_DERIV`` scores it against the real (noisy) PET as the ceiling of the SSIM/PSNR
targets.

``--anatomy-only`` (issue 14): the twin's PET also has every metabolic parameter that
no T1w shows at its population mean: WM and CSF uptake ratios, the atlas pattern's gamma
(1), the smooth random field (0), the regional metabolic factors (1), the PSF (5.5 mm
FWHM) and the extracranial uptakes; it keeps the subject's anatomy (tissue fractions,
cortical thickness, atrophy, ventricles), age effect, scanner, geometry and lesions. Its
preprocessed SUVR PET approximates E[PET | anatomy, age], the best a T1w (+ age) model
can predict: ``bench_synthesis.py --oracle TWIN_DERIV`` scores it like a prediction.

``--only c13 c14 ...``: write only these subjects of the cohort (each subject's random
streams depend on the seed, its group and index, and the cohort's plan, not on the
others, so they are the same subjects as in the full cohort).
"""

from __future__ import annotations

import sys

import numpy as np

from pet_synth_app.cli import simulate
from pet_synth_app.simulate import cohort, phantom

_plan_cohort = cohort.plan_cohort
_random_uptake = phantom.random_uptake
_random_pattern_field = phantom.random_pattern_field

POPULATION_MEAN_UPTAKE = {
    "wm": 0.30,
    "csf": float(np.mean(phantom.CSF_UPTAKE)),
    "skull": 0.015,
    "muscle": 0.20,
    "fat": 0.055,
    "skin": 0.115,
    "pattern_gamma": 1.0,
    "pattern_random": 0.0,
    "psf_fwhm_mm": 5.5,
}
"""Means of the uniform draws of ``phantom.random_uptake`` (the metabolic parameters)."""


def _noise_free_uptake(rng):
    uptake = _random_uptake(rng)
    uptake["noise"] = 0.0
    return uptake


def _mean_uptake(rng):
    uptake = _noise_free_uptake(rng)
    uptake.update(POPULATION_MEAN_UPTAKE)
    return uptake


def _mean_pattern(rng, space, uptake):
    _random_pattern_field(rng, space, uptake)  # draws the same numbers as the original
    return space.uptake_pattern.astype(np.float32)  # gamma 1, no field, regional factors 1


def _only(labels: list[str]):
    def plan(config):
        plans = [p for p in _plan_cohort(config) if p.label in labels]
        missing = sorted(set(labels) - {p.label for p in plans})
        if missing:
            raise SystemExit(f"--only: no subject {', '.join(missing)} in this cohort")
        return plans

    return plan


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--only" in args:
        at = args.index("--only")
        end = next((i for i in range(at + 1, len(args)) if args[i].startswith("-")), len(args))
        cohort.plan_cohort = _only(args[at + 1 : end])
        del args[at:end]
    if "--anatomy-only" in args:
        args.remove("--anatomy-only")
        phantom.random_uptake = _mean_uptake
        phantom.random_pattern_field = _mean_pattern
    else:
        phantom.random_uptake = _noise_free_uptake
    sys.exit(simulate.main(args))
