"""bench/bench_synthesis.py: LOO mean, GM deviation correlation, the warp of affine-space
predictions to MNI and an end-to-end run on tiny fake derivatives."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_tiny_weights
from test_synthesis_inputs import AFFINE, TEMPLATE_THICKNESS, toy_pet, toy_t1w, toy_tissues

from pet_synth_app.analysis.metrics import image_metrics
from pet_synth_app.synthesis.inference import synthesize_from_sources
from pet_synth_app.synthesis.inputs import InputSources, sources_from_derivatives

_BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(_BENCH))
_spec = importlib.util.spec_from_file_location("bench_synthesis", _BENCH / "bench_synthesis.py")
bs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bs)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPACE = "MNI152NLin2009aSym"


def _save(path: Path, data: np.ndarray, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), AFFINE), str(path))
    return path


def _translation(path: Path, shift_mm: tuple[float, float, float]) -> Path:
    """An ANTs transform file (.mat or .h5) that samples the moving image at x + shift."""
    import ants

    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, translation=list(shift_mm)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ants.write_transform(tx, str(path))
    return path


def make_fake_derivatives(
    root: Path,
    thickness: dict[str, float],
    gain: dict[str, float],
    noise: float = 0.0,
    seed: int = 0,
) -> Path:
    """A PetSynth output folder of toy participants (``test_synthesis_inputs`` anatomy):
    the T1w-space T1w and PET follow each participant's cortical thickness, the "SyN" MNI
    T1w and GM are the template's, the affine stage and the affine->MNI warp are
    identities (.mat, .h5), so the MNI PET is the T1w-space PET (+ ``noise``)."""
    rng = np.random.default_rng(seed)
    tpl = toy_tissues(TEMPLATE_THICKNESS)
    for s, th in thickness.items():
        sub = f"sub-{s}"
        anat, pet_dir = root / sub / "anat", root / sub / "pet"
        tis = toy_tissues(th)
        pet = toy_pet(tis, gain[s])
        if noise:
            pet = (pet + noise * rng.standard_normal(pet.shape)) * tis["mask"]
        _save(anat / f"{sub}_desc-preproc_T1w.nii.gz", toy_t1w(tis) * 800)
        _save(anat / f"{sub}_desc-brain_mask.nii.gz", tis["mask"], np.uint8)
        for label in ("GM", "WM", "CSF"):  # T1w-space tissues (the mni-pv fractions)
            _save(anat / f"{sub}_label-{label}_probseg.nii.gz", tis[label.lower()])
        _save(anat / f"{sub}_space-{SPACE}_desc-preproc_T1w.nii.gz", toy_t1w(tpl) * 800)
        _save(anat / f"{sub}_space-{SPACE}_desc-brain_mask.nii.gz", tpl["mask"], np.uint8)
        _save(anat / f"{sub}_space-{SPACE}_label-GM_probseg.nii.gz", tpl["gm"])
        _translation(anat / f"{sub}_from-T1w_to-{SPACE}Affine_mode-image_xfm.mat", (0, 0, 0))
        for a, b in ((f"{SPACE}Affine", SPACE), (SPACE, f"{SPACE}Affine")):
            _translation(anat / f"{sub}_from-{a}_to-{b}_mode-image_xfm.h5", (0, 0, 0))
        _save(pet_dir / f"{sub}_trc-FDG_space-T1w_desc-preproc_pet.nii.gz", pet)
        _save(pet_dir / f"{sub}_trc-FDG_space-{SPACE}_desc-preproc_pet.nii.gz", pet)
    return root


def toy_cohort(root: Path, n: int = 12, noise: float = 0.02) -> tuple[Path, Path, list[str]]:
    """Noisy derivatives and their noise-free twin; thickness 1.5-3.5 voxels, metabolic
    gain 1 ± 3 % (invisible in the T1w)."""
    rng = np.random.default_rng(42)
    ids = [f"c{i:02d}" for i in range(1, n + 1)]
    thick = dict(zip(ids, rng.uniform(1.5, 3.5, n), strict=True))
    gain = dict(zip(ids, 1.0 + 0.03 * rng.standard_normal(n), strict=True))
    noisy = make_fake_derivatives(root / "noisy", thick, gain, noise=noise)
    clean = make_fake_derivatives(root / "clean", thick, gain)
    return noisy, clean, ids


# ------------------------------------------------------------------ small functions
def test_loo_mean_leaves_the_tested_control_out():
    pets = {s: np.full((2, 2, 2), v, np.float32) for s, v in (("a", 1), ("b", 2), ("c", 6))}
    np.testing.assert_allclose(bs.loo_mean(pets, "a"), 4.0)
    np.testing.assert_allclose(bs.loo_mean(pets, "c"), 1.5)
    np.testing.assert_allclose(bs.loo_mean(pets, "zz"), 3.0)  # not in the pool: all of it
    with pytest.raises(SystemExit, match="leave-one-out"):
        bs.loo_mean({"a": pets["a"]}, "a")


def test_deviation_r_and_gm_region():
    rng = np.random.default_rng(0)
    ref = rng.uniform(1, 2, (6, 6, 6))
    dev = rng.standard_normal((6, 6, 6))
    gm = rng.uniform(0, 1, (6, 6, 6))
    mask = np.ones((6, 6, 6), bool)
    mask[0] = False
    region = bs.gm_region(gm, mask)
    assert region.sum() == ((gm > 0.5) & mask).sum() and not region[0].any()
    truth = ref + dev
    assert bs.deviation_r(ref + 0.3 * dev, truth, ref, region) == pytest.approx(1.0)
    assert bs.deviation_r(ref - 2 * dev, truth, ref, region) == pytest.approx(-1.0)
    # outside the region the deviations do not count
    other = ref + dev * region - 5 * dev * ~region
    assert bs.deviation_r(other, truth, ref, region) == pytest.approx(1.0)
    noise = ref + rng.standard_normal((6, 6, 6))
    assert abs(bs.deviation_r(noise, truth, ref, region)) < 0.5
    assert np.isnan(bs.deviation_r(ref, truth, ref, region))  # the mean itself


def test_warp_to_mni_goes_through_the_warp_file(tmp_path):
    """A 4 mm (2 voxel) translation warp shifts every stacked volume by 2 voxels; one call
    for several volumes gives what single calls give."""
    vol = np.zeros((16, 16, 8), np.float32)
    vol[6:9, 5:8, 3:5] = 1.0
    mask = _save(tmp_path / "mask.nii.gz", np.ones_like(vol), np.uint8)
    src = InputSources(mask_std=mask, warp=_translation(tmp_path / "w.h5", (4.0, 0, 0)))
    one = bs.warp_to_mni([vol], src)[0]
    both = bs.warp_to_mni([vol, 2 * vol], src)
    # +4 mm along ITK's x (LPS) is -4 mm along RAS x: the image moves 2 voxels up in i
    np.testing.assert_allclose(one, np.roll(vol, 2, 0), atol=1e-5)
    np.testing.assert_allclose(both[0], one, atol=1e-6)
    np.testing.assert_allclose(both[1], 2 * one, atol=1e-5)
    with pytest.raises(Exception, match="warp"):
        bs.warp_to_mni([vol], InputSources(mask_std=mask))


def test_throughput_counts_every_input_channel(tmp_path):
    """The FLOP count follows the model's channel count (1 vs 3 input channels)."""
    from pet_synth_app.synthesis.registry import build_model, model_config
    from pet_synth_app.synthesis.weights import save_generator

    vol = np.zeros((3, 32, 32, 4), np.float32)
    vol[:, 4:28, 4:28] = 0.5
    res = {}
    for n in (1, 3):
        config = model_config("cyclegan-mse", ngf=4, ndf=4, input_channels=n)
        card = {
            "model": "cyclegan-mse",
            "config": config,
            "input": {"voxel_size_mm": 2.0, "pet_scale": 2.5},
            "training": {"participants": []},
        }
        w = tmp_path / f"m{n}.safetensors"
        save_generator(build_model("cyclegan-mse", config).generator, w, card)
        res[n] = bs.throughput(w, vol[:n])
        assert res[n]["input_channels"] == n and res[n]["slices"] == 4
        assert res[n]["gflop_per_volume"] > 0 and res[n]["gflops"] > 0
    assert res[3]["gflop_per_volume"] > res[1]["gflop_per_volume"]


# ------------------------------------------------------------------ end to end
def _affine_card(weights: Path) -> Path:
    card_path = weights.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["input"]["representation"] = "affine"
    card["input"]["space"] = "MNI152NLin2009aSymAffine"  # synthesis.inputs.card_space
    card_path.write_text(json.dumps(card))
    return weights


def test_synthesize_mni_warps_affine_space_predictions(tmp_path):
    """An affine model's pseudo-PET goes to MNI through the derivatives' warp (here a
    2-voxel translation); an MNI model's is not warped."""
    deriv = make_fake_derivatives(tmp_path / "d", {"c01": 2.0}, {"c01": 1.0})
    src = sources_from_derivatives(deriv, "c01")
    src.warp = _translation(tmp_path / "shift.h5", (4.0, 0, 0))
    w = _affine_card(make_tiny_weights(tmp_path / "aff" / "tiny.safetensors"))
    raw, meta = synthesize_from_sources(src, w, fwhm_mm=0)
    out, meta2, secs = bs.synthesize_mni(src, w)
    assert meta["InputRepresentation"] == "affine" and "WarpedToMNI" in meta2 and secs > 0
    raw = np.asanyarray(raw.dataobj)
    assert np.abs(raw).max() > 0
    # synthesize_mni uses the card's smoothing; compare with a warp of the same output
    smooth, _ = synthesize_from_sources(src, w)
    np.testing.assert_allclose(
        out[2:-2], np.roll(np.asanyarray(smooth.dataobj), 2, 0)[2:-2], atol=1e-4
    )
    mni_w = make_tiny_weights(tmp_path / "mni" / "tiny.safetensors")
    out_mni, meta_mni, _ = bs.synthesize_mni(src, mni_w)
    ref, _ = synthesize_from_sources(src, mni_w)
    np.testing.assert_array_equal(out_mni, np.asanyarray(ref.dataobj))
    assert "WarpedToMNI" not in meta_mni


def test_main_on_fake_derivatives(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bs, "matmul_peak_gflops", lambda: 1.0)  # seconds on a busy box
    noisy, clean, ids = toy_cohort(tmp_path, n=5)
    w = _affine_card(make_tiny_weights(tmp_path / "m" / "tiny.safetensors"))
    out = tmp_path / "res.json"
    rc = bs.main(
        [
            str(noisy),
            "--weights",
            str(w),
            "--test",
            "c04",
            "c05",
            "--baseline",
            "c01",
            "c02",
            "--noise-free",
            str(clean),
            "--oracle",  # the same twin as the anatomy ceiling: the same scores
            str(clean),
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["representation"] == "affine" and res["loo_pool"] == ids
    assert [r["loo_pool_size"] for r in res["rows"]] == [4, 4]
    # the LOO-mean column is the mean of the 4 other controls, scored in the MNI mask
    real = bs.load_mni(noisy, "c04")
    others = [bs.load_mni(noisy, s)["pet"] for s in ids if s != "c04"]
    m = real["mask"]
    expect = image_metrics(np.mean(others, 0) * m, real["pet"], m)
    for k in bs.METRICS:
        assert res["rows"][0]["loo_mean"][k] == pytest.approx(expect[k], rel=1e-5)
    # the ceiling's deviation is the truth's: r = 1; the mean has no deviation: NaN
    assert res["noise_free"]["r_clean"][0] == pytest.approx(1.0)
    assert 0.5 < res["noise_free"]["r_real"][0] < 1.0
    assert np.isnan(res["rows"][0]["loo_mean"]["r_clean"])
    assert res["noise_free"]["psnr"][0] > res["loo_mean"]["psnr"][0]
    assert res["oracle"] == res["noise_free"]
    assert set(res["model"]) >= {*bs.METRICS, "r_real", "r_clean"}
    assert res["throughput"]["input_channels"] == 1
    printed = capsys.readouterr().out
    assert "| metric | cyclegan-mse (tiny.safetensors, affine) | LOO mean control PET" in printed
    assert "GM r(pred − LOO, noise-free − LOO)" in printed


def test_anatomy_only_twin_keeps_the_random_streams_and_sets_the_population_means():
    """noise_free_twin --anatomy-only: the uptake and pattern draws consume exactly the
    random numbers of the originals (so anatomy, geometry and T1w stay the subject's),
    and return the population means (no noise, gamma 1, no field, regional factors 1)."""
    from types import SimpleNamespace

    from pet_synth_app.simulate import phantom

    spec = importlib.util.spec_from_file_location("twin", _BENCH / "noise_free_twin.py")
    twin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(twin)
    space = SimpleNamespace(
        shape=(6, 7, 5),
        uptake_pattern=np.linspace(0.5, 1.5, 210).reshape(6, 7, 5),
        region_labels=None,
        resolution=2.0,
    )
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    orig = phantom.random_uptake(a)
    mean = twin._mean_uptake(b)
    pattern = twin._mean_pattern(b, space, mean)
    phantom.random_pattern_field(a, space, orig)
    assert a.random() == b.random()  # both streams at the same place
    assert mean["noise"] == 0 and mean["pattern_gamma"] == 1 and mean["wm"] == 0.30
    assert mean["gm_bqml"] == orig["gm_bqml"]  # the global scale is kept (SUVR removes it)
    np.testing.assert_array_equal(pattern, space.uptake_pattern.astype(np.float32))
