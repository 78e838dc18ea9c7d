"""petsynth-train and --model-weights: argument checks, participant selection, clear errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import make_bids, make_tiny_weights

from pet_synth_app import trainer
from pet_synth_app.cli import run, train
from pet_synth_app.errors import PetSynthError


def _err_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if "error:" in line]


def test_train_usage_errors(tmp_path, capsys):
    root = make_bids(tmp_path / "ds", subjects=("01", "02"))
    cases = [
        [str(tmp_path / "missing"), str(tmp_path / "m")],
        [str(root), str(tmp_path / "m"), "--unpaired"],  # cyclegan-mse needs pairs
        [str(root), str(tmp_path / "m"), "--folds", "1"],
        [str(root), str(tmp_path / "m"), "--folds", "2", "--fold", "3"],
        [str(root), str(tmp_path / "m"), "--val-fraction", "1.5"],
        [str(root), str(tmp_path / "m"), "--model", "pix2pix", "--prior"],
        # the diffusion models' prior takes a single-channel input only
        [str(root), str(tmp_path / "m"), "--model", "syndiff", "--prior"]
        + ["--input-representation", "mni-pv"],
    ]
    for argv in cases:
        assert train.main(argv) == 2, argv
        lines = _err_lines(capsys)
        assert len(lines) == 1 and lines[0].startswith("petsynth: error:"), lines
    assert not (tmp_path / "m").exists()


def test_train_no_controls(tmp_path, capsys):
    root = make_bids(tmp_path / "ds", subjects=("01", "02"), group="patient")
    assert train.main([str(root), str(tmp_path / "m"), "--derivatives", str(tmp_path)]) == 1
    (line,) = _err_lines(capsys)
    assert "no participant with group control" in line and "participants.tsv" in line


def test_train_needs_two_with_pet(tmp_path, capsys):
    root = make_bids(tmp_path / "ds", subjects=("01", "02"))
    deriv = tmp_path / "deriv"
    deriv.mkdir()
    assert train.main([str(root), str(tmp_path / "m"), "--derivatives", str(deriv)]) == 1
    (line,) = _err_lines(capsys)
    assert "need at least 2 participants" in line


def test_select_participants_and_folds(tmp_path):
    root = make_bids(tmp_path / "ds", subjects=("01", "02", "03"))
    assert trainer.select_participants(root, ["control"], []) == ["01", "02", "03"]
    assert trainer.select_participants(root, ["patient"], ["sub-02", "01"]) == ["01", "02"]
    names = [f"c{i:02d}" for i in range(10)]
    folds = trainer.split_folds(names, 3, seed=4)
    assert sorted(sum(folds, [])) == names and [len(f) for f in folds] == [4, 3, 3]
    assert folds == trainer.split_folds(names, 3, seed=4)
    assert folds != trainer.split_folds(names, 3, seed=5)


def test_find_training_files(tmp_path):
    space = "space-MNI152NLin2009aSym"
    anat, pet = tmp_path / "sub-01" / "anat", tmp_path / "sub-01" / "pet"
    anat.mkdir(parents=True)
    pet.mkdir()
    for name in (
        f"anat/sub-01_{space}_desc-preproc_T1w.nii.gz",
        f"anat/sub-01_{space}_desc-brain_mask.nii.gz",
    ):
        (tmp_path / "sub-01" / name).touch()
    files = trainer.find_training_files(tmp_path, "01")
    assert files["t1w"].name.endswith("desc-preproc_T1w.nii.gz") and files["pet"] is None
    (pet / f"sub-01_trc-FDG_{space}_desc-preproc_pet.nii.gz").touch()
    assert trainer.find_training_files(tmp_path, "01")["pet"] is not None
    assert trainer.find_training_files(tmp_path, "02") is None


@pytest.mark.parametrize("problem", ["pickle", "missing", "corrupt", "card"])
def test_bad_model_weights_refused_before_writing(tmp_path, capsys, problem):
    root = make_bids(tmp_path / "ds", subjects=("01",))
    weights = make_tiny_weights(tmp_path / "m" / "tiny.safetensors")
    if problem == "pickle":
        weights = tmp_path / "m" / "model.pt"
        weights.write_bytes(b"\x80\x04not a safetensors file")
    elif problem == "missing":
        weights = tmp_path / "m" / "nothing.safetensors"
    elif problem == "corrupt":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        weights.with_suffix(".json").write_text("{not json")
    out = tmp_path / "out"
    code = run.main(
        [
            str(root),
            str(out),
            "participant",
            "-w",
            str(tmp_path / "w"),
            "--model-weights",
            str(weights),
        ]
    )
    assert code == 1
    (line,) = _err_lines(capsys)
    assert str(weights.name) in line or "tiny.json" in line
    assert not out.exists()  # nothing half-written


def test_model_weights_reach_the_workflow(tmp_path, tiny_weights):
    from pet_synth_app import bids as pbids
    from pet_synth_app.config import Settings
    from pet_synth_app.workflows import base

    root = make_bids(tmp_path / "ds", subjects=("01",), pet=False)
    units, _ = pbids.collect_inputs(pbids.load_layout(root))
    settings = Settings(
        bids_dir=root,
        output_dir=tmp_path / "o",
        work_dir=tmp_path / "w",
        model_weights=tiny_weights,
        synthesis_fwhm=2.0,
    )
    wf = base.init_petsynth_wf(settings, units)
    node = wf.get_node("single_subject_01_wf.synthesis_wf.synthesize")
    assert node.inputs.weights == str(tiny_weights) and node.inputs.fwhm == 2.0
    names = wf.list_node_names()
    assert any(n.endswith("synthesis_derivatives_wf.ds_pseudo_std") for n in names)
    assert any(n.endswith("synthesis_derivatives_wf.ds_pseudo_t1w") for n in names)
    card = json.loads(tiny_weights.with_suffix(".json").read_text())
    assert card["sha256"][:12] in wf.visit_desc()
    settings = dataclasses.replace(settings, skip_synthesis=True)
    names = base.init_petsynth_wf(settings, units).list_node_names()
    assert not any("synthesis" in n for n in names)


def test_corrupt_weights_error_is_one_line(tmp_path):
    from pet_synth_app.synthesis.weights import load_generator

    weights = make_tiny_weights(tmp_path / "x.safetensors")
    weights.write_bytes(b"garbage")
    with pytest.raises(PetSynthError) as exc:
        load_generator(weights)
    assert "\n" not in str(exc.value) and "sha256" in str(exc.value)


def _vol(name, with_pet=True, seed=0):
    import numpy as np

    from pet_synth_app.synthesis.training import Volumes

    rng = np.random.default_rng(seed)
    mask = np.zeros((40, 44, 36), bool)
    mask[4:36, 4:40, 3:33] = True
    t1 = (rng.random(mask.shape) * mask).astype(np.float32)
    pet = ((1 - t1) * mask * 0.8).astype(np.float32)
    return Volumes(
        name,
        t1,
        pet if with_pet else None,
        mask,
        np.diag([2, 2, 2, 1.0]),
        pet * 2.5 if with_pet else None,
    )


def test_resume_refuses_other_settings(tmp_path):
    from pet_synth_app.synthesis.registry import model_config
    from pet_synth_app.synthesis.training import train

    vols, val = [_vol("a"), _vol("b", seed=1)], [_vol("c", seed=2)]
    cfg = model_config("pix2pix", ngf=4, ndf=4, batch_size=4, n_epochs=1, n_epochs_decay=0)
    train("pix2pix", cfg, vols, val, tmp_path, max_steps_per_epoch=1)
    with pytest.raises(PetSynthError, match="--no-resume"):
        train("pix2pix", {**cfg, "ngf": 8}, vols, val, tmp_path, epochs=2, max_steps_per_epoch=1)
    with pytest.raises(PetSynthError, match="--no-resume"):
        train("pix2pix", cfg, vols[:1], val, tmp_path, epochs=2, max_steps_per_epoch=1)


def test_early_stop_is_remembered(tmp_path):
    from pet_synth_app.synthesis.registry import model_config
    from pet_synth_app.synthesis.training import train

    vols, val = [_vol("a"), _vol("b", seed=1)], [_vol("c", seed=2)]
    cfg = model_config(
        "pix2pix", ngf=4, ndf=4, batch_size=4, n_epochs=5, n_epochs_decay=0, lr=0.0
    )  # lr 0: validation never improves after epoch 1
    res = train("pix2pix", cfg, vols, val, tmp_path, patience=1, max_steps_per_epoch=1)
    assert len(res.history) == 2
    seen = []
    train(
        "pix2pix",
        cfg,
        vols,
        val,
        tmp_path,
        patience=1,
        max_steps_per_epoch=1,
        progress=lambda *a: seen.append(a),
    )
    assert seen == []  # the rerun does not train again


def test_unpaired_samples_use_t1w_only_participants():
    from pet_synth_app.synthesis.training import slice_samples

    vols = [_vol("a"), _vol("t1only", with_pet=False, seed=3)]
    box = (slice(0, 40), slice(0, 44))
    paired = slice_samples(vols, box, paired=True)
    unpaired = slice_samples(vols, box, paired=False)
    assert len(paired.t1w) == len(paired.pet)
    assert len(unpaired.t1w) == 2 * len(paired.t1w) and len(unpaired.pet) == len(paired.pet)


def test_reference_region_must_match_the_model(tmp_path, capsys):
    root = make_bids(tmp_path / "ds", subjects=("01",))
    weights = make_tiny_weights(tmp_path / "m" / "tiny.safetensors")
    out = tmp_path / "out"
    code = run.main(
        [
            str(root),
            str(out),
            "participant",
            "-w",
            str(tmp_path / "w"),
            "--model-weights",
            str(weights),
            "--reference-region",
            "cerebellum",
        ]
    )
    assert code == 1
    (line,) = _err_lines(capsys)
    assert "reference region gm-mean" in line and not out.exists()


def test_incompatible_normative_model_refused_before_writing(tmp_path, capsys):
    import numpy as np

    from pet_synth_app.analysis import normative
    from pet_synth_app.preproc.templates import get_template

    root = make_bids(tmp_path / "ds", subjects=("01",))
    weights = make_tiny_weights(tmp_path / "m" / "tiny.safetensors")
    ref = get_template("mask", 2)
    z = np.zeros(ref.shape)
    model = normative.NormativeModel(
        z, z + 1, z, z + 1, np.asanyarray(ref.dataobj) > 0, ref.affine, {"model_sha256": "0" * 64}
    )
    folder = normative.save(model, tmp_path / "norm")
    out = tmp_path / "out"
    code = run.main(
        [
            str(root),
            str(out),
            "participant",
            "-w",
            str(tmp_path / "w"),
            "--model-weights",
            str(weights),
            "--normative-model",
            str(folder),
        ]
    )
    assert code == 1
    (line,) = _err_lines(capsys)
    assert "refit it" in line and not out.exists()


def test_card_input_is_validated(tmp_path):
    from pet_synth_app.synthesis.weights import read_card

    weights = make_tiny_weights(tmp_path / "x.safetensors")
    card = json.loads(weights.with_suffix(".json").read_text())
    del card["input"]["pet_scale"]
    weights.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(PetSynthError, match="pet_scale"):
        read_card(weights)


def test_group_level_without_participant_outputs(tmp_path, capsys):
    root = make_bids(tmp_path / "ds", subjects=("01",))
    out = tmp_path / "out"
    out.mkdir()
    assert run.main([str(root), str(out), "group"]) == 1
    (line,) = _err_lines(capsys)
    assert "run the participant level first" in line
