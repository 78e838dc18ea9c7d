"""How much of the phantoms' inter-subject PET variation is anatomy, how much metabolism?

Usage: python bench/phantom_variance.py [--n 10] [--seed 0] [--resolution 2]

Crosses ``n`` phantom anatomies (tissue maps: regional cortical atrophy, age-driven cortical
thinning and ventricle growth, as in ``simulate_subject``) with ``n`` metabolic states
(uptake ratios, pattern gamma and smooth field, regional factors and the age decline of
that subject), all from ``n`` subjects with ages U(20, 85). Every pair gives a noise-free
activity map on the work grid (affinely aligned MNI space: what an affine-only input
keeps), blurred with a 5.5 mm FWHM PSF and scaled to its whole-brain mean (SUVR).
A two-way decomposition over the pairs splits the inter-subject variance of GM voxels
(template GM >= 0.5) into anatomy, metabolism and their interaction; the rerun without
the age decline shows its share. Also prints the regional (Harvard-Oxford) GM SUVR CoV
of the n real subjects (diagonal pairs) and of the metabolism alone (template anatomy).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi

from pet_synth_app.simulate import phantom


def subject_parts(
    space: phantom.TemplateSpace, seed: int, i: int, without: tuple[str, ...] = ()
) -> tuple:
    """(tissue space, anat, uptake, pattern, age) of subject ``i``, in simulate_subject order
    (``without``: anatomy components left out, same random draws)."""
    rng = np.random.default_rng([seed, 9, i, 0])
    age = float(rng.uniform(*phantom.AGE_RANGE))
    anat = phantom.random_anatomy(rng)
    gm_loss, _ = phantom.random_atrophy(rng, space)
    thickness, morph = phantom.random_morphometry(rng, space, age)
    if "atrophy" in without:
        gm_loss = np.zeros_like(gm_loss)
    if "thinning" in without:
        thickness = np.ones_like(thickness)
    vent = 0.0 if "ventricles" in without else morph["ventricle_mm"]
    tissue = phantom.morphed_space(space, phantom.subject_thickness(thickness, gm_loss), vent)
    uptake = phantom.random_uptake(rng)
    uptake.update(phantom.age_uptake(age))
    pattern = phantom.random_pattern_field(rng, space, uptake)
    return tissue, anat, uptake, pattern, age


def suvr(space, tissue, anat, uptake, pattern, sigma_vox, brain) -> np.ndarray:
    act = phantom.pet_activity_mni(None, tissue, uptake, anat, space.dist_out, (), pattern)
    act = ndi.gaussian_filter(act, sigma_vox, mode="constant")
    return act / act[brain].mean()


def decompose(y: np.ndarray) -> dict[str, float]:
    """Two-way split of sum over voxels of the variance of y[i, j, voxel]."""
    m = y.mean((0, 1))
    a = y.mean(1) - m
    b = y.mean(0) - m
    total = ((y - m) ** 2).sum() / (y.shape[0] * y.shape[1])
    ss_a = (a**2).sum() / y.shape[0]
    ss_b = (b**2).sum() / y.shape[1]
    return {
        "anatomy": ss_a / total,
        "metabolism": ss_b / total,
        "interaction": 1.0 - (ss_a + ss_b) / total,
    }


def regional_cov(maps: list[np.ndarray], labels: np.ndarray, w: np.ndarray) -> np.ndarray:
    regs = [v for v in np.unique(labels) if v and v not in (97, 106) and w[labels == v].sum() > 30]
    rows = []
    for y in maps:
        glob = (y * w).sum() / w.sum()
        rows.append([(y * w)[labels == v].sum() / w[labels == v].sum() / glob for v in regs])
    r = np.array(rows)
    return r.std(0) / r.mean(0) * 100.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=2, choices=(1, 2))
    p.add_argument(
        "--without",
        nargs="+",
        default=(),
        choices=("atrophy", "thinning", "ventricles"),
        help="leave these anatomy components out (same draws otherwise)",
    )
    opts = p.parse_args()
    start = time.perf_counter()
    space = phantom.load_template_space(opts.resolution)
    sigma = 5.5 / (2 * np.sqrt(2 * np.log(2))) / space.resolution
    brain = space.brain > 0.5
    gm = space.gm >= 0.5
    parts = [subject_parts(space, opts.seed, i, tuple(opts.without)) for i in range(opts.n)]
    ages = [q[4] for q in parts]
    print(f"{opts.n} subjects, ages {', '.join(f'{a:.0f}' for a in ages)}")
    if opts.without:
        print(f"anatomy without: {', '.join(opts.without)}")
    for label, with_age in (("with age decline", True), ("without age decline", False)):
        y = np.empty((opts.n, opts.n, int(gm.sum())), np.float32)
        diag = []
        for i, (tissue, anat, _, _, _) in enumerate(parts):
            for j, (_, _, uptake, pattern, _) in enumerate(parts):
                up = dict(uptake) if with_age else {**uptake, "age_uptake_decline": 0.0}
                vol = suvr(space, tissue, anat, up, pattern, sigma, brain)
                y[i, j] = vol[gm]
                if i == j:
                    diag.append(vol)
        frac = decompose(y.astype(np.float64))
        print(
            f"GM SUVR variance ({label}): anatomy {frac['anatomy']:.1%}, "
            f"metabolism {frac['metabolism']:.1%}, interaction {frac['interaction']:.1%}"
        )
        if with_age:
            w = space.gm * (space.gm > 0.3)
            assert space.region_labels is not None
            cov = regional_cov(diag, space.region_labels, w)
            print(
                f"regional GM SUVR CoV, {opts.n} subjects (anatomy + metabolism, PSF, "
                f"noise-free): median {np.median(cov):.1f} %, 10-90 % "
                f"{np.percentile(cov, 10):.1f}-{np.percentile(cov, 90):.1f} %"
            )
            ref = parts[0]
            meta_only = [suvr(space, space, ref[1], q[2], q[3], sigma, brain) for q in parts]
            cov = regional_cov(meta_only, space.region_labels, w)
            print(
                f"regional GM SUVR CoV, metabolism only (template anatomy, PSF): median "
                f"{np.median(cov):.1f} %, 10-90 % {np.percentile(cov, 10):.1f}-"
                f"{np.percentile(cov, 90):.1f} %"
            )
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
