"""Write the noise-free twin of a phantom cohort: the same subjects, PET without noise.

Usage: python bench/noise_free_twin.py OUT_DIR [petsynth-simulate options ...]

With the options of the original cohort (same ``--seed``), every subject gets the same
anatomy, uptake parameters, lesions, PSF and geometry as in the original; only the PET
noise is 0 (``random_uptake`` still draws it, so the random streams stay aligned). The
twin's preprocessed SUVR PET is the best any T1w -> PET model could predict up to the
uptake parameters that the T1w does not determine: ``bench_synthesis.py --noise-free
TWIN_DERIV`` scores it against the real (noisy) PET as the ceiling of the SSIM/PSNR
targets.
"""

from __future__ import annotations

import sys

from pet_synth_app.cli import simulate
from pet_synth_app.simulate import phantom

_random_uptake = phantom.random_uptake


def _noise_free_uptake(rng):
    uptake = _random_uptake(rng)
    uptake["noise"] = 0.0
    return uptake


if __name__ == "__main__":
    phantom.random_uptake = _noise_free_uptake
    sys.exit(simulate.main(sys.argv[1:]))
