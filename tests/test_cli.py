"""`petsynth` command line: parsing, usage errors and clear errors on bad datasets."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
from conftest import make_bids

from pet_synth_app import __version__
from pet_synth_app.cli import run
from pet_synth_app.cli.parser import get_parser
from pet_synth_app.config import Settings


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pet_synth_app.cli.run", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_help_shows_groups_and_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        run.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in (
        "--participant-label",
        "--participant_label",
        "--reference-region",
        "(default: gm-mean)",
        "Options to handle performance",
        "--use-plugin",
        "--skip-bids-validation",
        "--stop-on-first-crash",
        "--sloppy",
    ):
        assert text in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        run.main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_parse_both_label_spellings(tmp_path):
    parser = get_parser()
    a = parser.parse_args(
        [str(tmp_path), str(tmp_path / "o"), "participant", "--participant_label", "sub-01", "02"]
    )
    b = parser.parse_args(
        [str(tmp_path), str(tmp_path / "o"), "participant", "--participant-label", "sub-01", "02"]
    )
    assert a.participant_label == b.participant_label == ["sub-01", "02"]


@pytest.mark.parametrize("where", ["same", "inside", "work-inside"])
def test_output_or_work_dir_inside_bids_is_usage_error(tmp_path, capsys, where):
    bids = make_bids(tmp_path / "ds")
    out = {"same": bids, "inside": bids / "derivatives" / "petsynth"}.get(where, tmp_path / "o")
    extra = ["-w", str(bids / "work")] if where == "work-inside" else ["-w", str(tmp_path / "w")]
    code = run.main([str(bids), str(out), "participant", *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert "petsynth: error:" in err and "Traceback" not in err
    assert not (bids / "derivatives").exists() and not (bids / "work").exists()


def test_unknown_option_is_usage_error():
    res = _cli("/nonexistent", "/tmp/o", "participant", "--no-such-flag")
    assert res.returncode == 2


def test_not_bids_and_no_match(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        run.main(
            [
                str(tmp_path / "empty"),
                str(tmp_path / "o"),
                "participant",
                "-w",
                str(tmp_path / "w"),
            ]
        )
        == 1
    )
    assert "not a BIDS dataset" in capsys.readouterr().err
    bids = make_bids(tmp_path / "ds")
    assert (
        run.main(
            [
                str(bids),
                str(tmp_path / "o"),
                "participant",
                "--participant-label",
                "99",
                "-w",
                str(tmp_path / "w"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "no participant matches" in err
    assert not (tmp_path / "o").exists()


EXPECTED = {
    "pet001": ["T1w.nii: file is an HTML/XML page", "image has 21 frame(s), sidecar lists 45"],
    "pet002": [
        "sub-01_ses-baseline_T1w.nii: file is an HTML/XML page",
        "sub-02_ses-rescan_pet.nii.gz: file is an HTML/XML page",
    ],
    "pet003": ["T1w.nii: file is 1 byte(s)", "pet.nii.gz: file is an HTML/XML page"],
    "pet004": ["sub-01 has no T1w image"],
    "pet005": [
        "ses-baseline_T1w.nii.gz: all voxels are zero",
        "task-eyes_pet.nii.gz: file is 1 byte(s)",
    ],
    "pet006": ["sub-01 has no T1w image"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bids_examples_give_clear_errors(realdata, tmp_path, name):
    """Real BIDS PET layouts with broken images: one line per problem, exit 1, no output."""
    res = _cli(
        realdata / "bids-examples" / name,
        tmp_path / "out",
        "participant",
        "-w",
        tmp_path / "work",
        cwd=tmp_path,
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert all(ln.startswith("petsynth: error: ") for ln in lines), lines
    # "<file>: sub-01 skipped: <problem>": compared without the participant's name
    plain = [re.sub(r": \S+ skipped: ", ": ", ln) for ln in lines]
    for text in EXPECTED[name]:
        assert any(text in ln for ln in plain), (text, lines)
    assert not (tmp_path / "out").exists()


def test_default_threads_leave_room_for_two_steps(tmp_path):
    """Participant level: nprocs - 1 threads per step (two steps at a time on 2 CPUs);
    group level, one process: all of them; always 1 to 8."""
    from pet_synth_app.config import default_omp_nthreads

    assert [default_omp_nthreads(n) for n in (1, 2, 3, 8, 16)] == [1, 1, 2, 7, 8]
    assert [default_omp_nthreads(n, "group") for n in (1, 2, 3, 16)] == [1, 2, 3, 8]
    common = dict(bids_dir=tmp_path / "b", output_dir=tmp_path / "o", nprocs=2)
    assert Settings(**common).omp_nthreads == 1
    assert Settings(**common, analysis_level="group").omp_nthreads == 2
    assert Settings(**common, omp_nthreads=2).omp_nthreads == 2  # given: kept


def test_settings_toml_roundtrip(tmp_path):
    s = Settings(bids_dir=tmp_path / "b", output_dir=tmp_path / "o", nprocs=3, sloppy=True)
    assert s.omp_nthreads == 2 and s.registration_preset == "sloppy"
    path = s.to_toml(tmp_path / "logs" / "config.toml")
    data = tomllib.loads(path.read_text())["petsynth"]
    assert data["bids_dir"] == str(tmp_path / "b")
    assert data["nprocs"] == 3 and data["reference_region"] == "gm-mean"
    assert "use_plugin" not in data  # None values are dropped


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ocsvm-gamma", "wide"], "--ocsvm-gamma must be a positive number or 'scale'"),
        (["--ocsvm-gamma", "-1"], "--ocsvm-gamma must be a positive number or 'scale'"),
        (["--ocsvm-nu", "0"], "--ocsvm-nu must be in (0, 1]"),
        (["--siamese-epochs", "0"], "--siamese-epochs must be >= 1"),
        (["--z-fwhm", "-2"], "--z-fwhm must be >= 0 (mm)"),
    ],
)
def test_anomaly_options_are_checked(tmp_path, capsys, args, message):
    bids = make_bids(tmp_path / "bids")
    code = run.main([str(bids), str(tmp_path / "out"), "group", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_anomaly_options_reach_settings(tmp_path):
    bids = make_bids(tmp_path / "bids")
    args = [
        str(bids),
        str(tmp_path / "o"),
        "group",
        "--augment-synthetic",
        "--ocsvm-gamma",
        "0.05",
        "--ocsvm-nu",
        "0.2",
        "--ocsvm-threshold",
        "-2",
    ]
    opts = get_parser().parse_args(args)
    s = Settings.from_options(vars(opts))
    assert (s.augment_synthetic, s.ocsvm_gamma, s.ocsvm_nu, s.ocsvm_threshold) == (
        True,
        0.05,
        0.2,
        -2.0,
    )


def test_demo_refuses_too_small_cohort_and_existing_output(tmp_path, capsys):
    from pet_synth_app.cli import demo

    assert demo.main([str(tmp_path / "d"), "--n-controls", "3", "--n-t1w-only", "2"]) == 2
    assert "needs >= 2 controls with PET" in capsys.readouterr().err
    (tmp_path / "d2" / "bids").mkdir(parents=True)
    assert demo.main([str(tmp_path / "d2")]) == 2
    assert "--overwrite" in capsys.readouterr().err
