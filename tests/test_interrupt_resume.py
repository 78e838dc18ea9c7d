"""Interrupt, kill and resume; parallel participants into one output folder;
``--deterministic`` (issue 18). Each run is a separate ``petsynth`` process on a tiny
phantom (2 mm, --sloppy), as a user or a SLURM array would start it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pet_synth_app.atomicio import TMP_MARK
from pet_synth_app.cli import simulate as sim_cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ["--sloppy", "--nprocs", "2", "--deterministic", "--random-seed", "3"]
TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def bids3(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom3") / "bids"
    args = [str(root), "--n-controls", "2", "--n-patients", "1", "--seed", "7"]
    args += ["--voxel-size", "2", "--n-t1w-only", "0", "--n-4d", "0"]
    assert sim_cli.main(args) == 0
    return root


def start(bids: Path, out: Path, work: Path, label: str, log: Path) -> subprocess.Popen:
    """``petsynth BIDS OUT participant`` in its own process group (like a shell job);
    stdout to ``log``, stderr to ``log`` + ``.err``."""
    # a killed process leaves its temporary folders (SIGKILL runs no cleanup): keep them
    # under the test's own folder, not in the machine's /tmp
    tmp = work.parent / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ET": "1", "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "pet_synth_app.cli.run", str(bids), str(out), "participant"]
    cmd += ["-w", str(work), "--participant-label", label, *OPTIONS]
    with open(log, "w") as fo, open(str(log) + ".err", "w") as fe:
        proc = subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, start_new_session=True)
    proc.err_file = Path(str(log) + ".err")
    return proc


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT_S) -> tuple[int, str]:
    """Exit code and stderr of a run."""
    proc.wait(timeout=timeout)
    return proc.returncode, proc.err_file.read_text()


def messages(stderr: str) -> list[str]:
    """stderr without PetSynth's own INFO progress lines (tracebacks, warnings and
    errors stay)."""
    return [ln for ln in stderr.strip().splitlines() if " [petsynth] INFO: " not in ln]


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 900, poll: float = 0.02):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if found := predicate():
            return found
        if proc.poll() is not None:
            raise AssertionError(f"run ended (code {proc.returncode}) before the kill point")
        time.sleep(poll)
    raise AssertionError("kill point not reached in time")


def group_gone(pgid: int, timeout: float = 20) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def outputs(out: Path) -> dict[str, Path]:
    """Derivative files of a run (not logs, reports' timing text or temporaries)."""
    skip = ("logs/", "group/")
    return {
        str(p.relative_to(out)): p
        for p in out.rglob("*")
        if p.is_file()
        and not str(p.relative_to(out)).startswith(skip)
        and TMP_MARK not in str(p)
        and not p.name.startswith(".")
    }


def assert_pairs_complete(out: Path) -> None:
    """No image without its sidecar, no temporary name in a final place."""
    for nii in out.rglob("sub-*/**/*.nii.gz"):
        if TMP_MARK in str(nii):
            continue
        sidecar = nii.with_name(nii.name.split(".")[0] + ".json")
        assert sidecar.is_file(), f"{nii} has no sidecar"
        json.loads(sidecar.read_text())  # complete JSON
        nib.load(nii).get_fdata()  # complete image


def assert_same_outputs(out: Path, ref: Path, subject: str) -> None:
    got = {k: v for k, v in outputs(out).items() if k.startswith(f"sub-{subject}")}
    want = {k: v for k, v in outputs(ref).items() if k.startswith(f"sub-{subject}")}
    assert sorted(got) == sorted(want)
    n_nii = 0
    for name, path in want.items():
        if name.endswith(".nii.gz"):
            a, b = nib.load(path), nib.load(got[name])
            assert np.array_equal(a.affine, b.affine), name
            assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)), name
            n_nii += 1
        elif name.endswith(".json"):
            want_meta, got_meta = json.loads(path.read_text()), json.loads(got[name].read_text())
            for meta in (want_meta, got_meta):  # which run wrote it, not what it says
                meta.pop("RunId", None)
            assert want_meta == got_meta, name
    assert n_nii >= 10  # 16 NIfTI outputs for a phantom participant with PET


@pytest.fixture(scope="module")
def reference(bids3, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("reference")
    proc = start(bids3, base / "out", base / "work", "c01", base / "log.txt")
    code, err = finish(proc)
    assert code == 0, err
    return base / "out"


def started_since(node_dir: Path, t_start: float) -> bool:
    """Whether a node's run began after ``t_start`` (its unfinished marker is newer)."""
    for marker in node_dir.glob("_0x*_unfinished.json"):
        try:
            if marker.stat().st_mtime > t_start:
                return True
        except FileNotFoundError:  # the rerun clears the killed run's marker meanwhile
            continue
    return False


def test_sigint_then_sigkills_then_resume(bids3, reference, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    reg_dir = work / "petsynth_wf" / "single_subject_c01_wf" / "anat_preproc_wf" / "register"
    report = out / "sub-c01.html"

    # 1. Ctrl-C (SIGINT to the process group) during the registration
    proc = start(bids3, out, work, "c01", tmp_path / "log1.txt")
    wait_for(lambda: list(reg_dir.glob("_0x*_unfinished.json")), proc, poll=0.5)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGINT)
    code, err = finish(proc, timeout=120)
    assert code == 130
    assert messages(err) == [
        "petsynth: error: interrupted; rerun with the same -w/--work-dir to resume"
    ]
    assert group_gone(proc.pid), "child processes left running after Ctrl-C"
    assert not report.exists()
    assert not list((out / "logs").glob("crash-*/*"))  # an interrupt is not a crash

    # 2. SIGKILL during the registration of the rerun
    t_start = time.time()
    proc = start(bids3, out, work, "c01", tmp_path / "log2.txt")
    wait_for(lambda: started_since(reg_dir, t_start), proc, poll=0.5)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc, timeout=60)
    assert group_gone(proc.pid)
    assert not report.exists()

    # 3. SIGKILL while the derivatives are being written
    proc = start(bids3, out, work, "c01", tmp_path / "log3.txt")
    wait_for(lambda: (out / "sub-c01").is_dir() and any((out / "sub-c01").rglob("*")), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc, timeout=60)
    assert group_gone(proc.pid)
    assert not report.exists()
    assert_pairs_complete(out)

    # 4. the rerun finishes, with the outputs of an uninterrupted run
    proc = start(bids3, out, work, "c01", tmp_path / "log4.txt")
    code, err = finish(proc)
    assert code == 0, err
    assert report.is_file()
    assert_same_outputs(out, reference, "c01")
    assert not list(out.rglob(f"*{TMP_MARK}*"))  # the killed run's temporaries removed


def test_sigterm_exits_143(bids3, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = start(bids3, out, work, "c02", tmp_path / "log.txt")
    wait_for(lambda: (work / "petsynth_wf").is_dir(), proc, poll=0.2)
    time.sleep(5)
    proc.send_signal(signal.SIGTERM)  # the main process only, as `kill PID` or SLURM does
    code, err = finish(proc, timeout=120)
    assert code == 143
    assert messages(err) == [
        "petsynth: error: interrupted; rerun with the same -w/--work-dir to resume"
    ]
    assert group_gone(proc.pid), "workers left running after SIGTERM"
    assert not (out / "sub-c02.html").exists()


@pytest.fixture(scope="module")
def parallel(bids3, tmp_path_factory) -> dict:
    """Three participants started at once: one output folder, one shared work dir."""
    base = tmp_path_factory.mktemp("parallel")
    out, work = base / "out", base / "work"
    (out / "group").mkdir(parents=True)
    (out / "group" / "report.html").write_text("<html></html>")  # left alone by each
    procs = {
        label: start(bids3, out, work, label, base / f"log-{label}.txt")
        for label in ("c01", "c02", "p01")
    }
    results = {label: finish(p) for label, p in procs.items()}
    return {"out": out, "results": results}


def test_parallel_participants_one_output_folder(parallel):
    out = parallel["out"]
    for label, (code, err) in parallel["results"].items():
        assert code == 0, (label, err)
        assert (out / f"sub-{label}.html").is_file()
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    citation = (out / "logs" / "CITATION.md").read_text()
    assert citation.count("# Methods") == citation.count("## Participant level") == 1
    assert citation.count("## References") == 1 and "[@nipype]" in citation
    assert len(list((out / "logs").glob("config-*.toml"))) == 3
    assert_pairs_complete(out)
    assert not list(out.rglob(f"*{TMP_MARK}*"))
    # participant runs leave the group report to `group --reports-only` (one writer)
    assert (out / "group" / "report.html").read_text() == "<html></html>"


def test_deterministic_runs_are_bit_identical(parallel, reference):
    """c01 processed twice (alone, and next to two others): identical files."""
    assert_same_outputs(parallel["out"], reference, "c01")
