"""Atomic writes, locks, interrupts, ``--deterministic`` and ``--mem-mb`` (issue 18); the
end-to-end runs are in test_interrupt_resume.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pet_synth_app import atomicio
from pet_synth_app.cli.parser import get_parser
from pet_synth_app.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_write_text_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a" / "dataset_description.json"
    atomicio.write_text(path, "one")
    atomicio.write_text(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["dataset_description.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomicio.os, "replace", boom)
    with pytest.raises(OSError):
        atomicio.write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_lock_serialises_read_modify_write_across_processes(tmp_path):
    counter, lock = tmp_path / "n.txt", tmp_path / ".lock"
    counter.write_text("0")
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from pet_synth_app import atomicio
        p = Path({str(counter)!r})
        for _ in range(40):
            with atomicio.locked(Path({str(lock)!r})):
                n = int(p.read_text())
                atomicio.write_text(p, str(n + 1))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert counter.read_text() == "120"  # no lost update


def test_remove_stale_temporaries(tmp_path):
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sub = tmp_path / "sub-01" / "anat"
    sub.mkdir(parents=True)
    mine = sub / f".x.nii.gz{atomicio.TMP_MARK}-{host}-{os.getpid()}-0123abcd"
    orphan = sub / f".y.nii.gz{atomicio.TMP_MARK}-{host}-{dead.pid}-0123abcd"
    other_host = sub / f".z.json{atomicio.TMP_MARK}-elsewhere-{dead.pid}-0123abcd"
    old = tmp_path / f".sink{atomicio.TMP_MARK}-elsewhere-1-0123abcd"
    for p in (mine, orphan, other_host):
        p.write_text("partial")
    old.mkdir()
    (old / "file.nii.gz").write_text("partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    keep = sub / "sub-01_T1w.nii.gz"
    keep.write_text("final")
    assert atomicio.remove_stale_temporaries(tmp_path) == 2
    assert mine.exists() and other_host.exists() and keep.exists()
    assert not orphan.exists() and not old.exists()


def _sink(tmp_path: Path):
    from pet_synth_app.interfaces.bids import DerivativesDataSink

    src = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    src.parent.mkdir(parents=True)
    nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4)).to_filename(
        str(src)
    )
    out = tmp_path / "out"
    sink = DerivativesDataSink(
        base_directory=str(out), source_file=str(src), desc="preproc", suffix="T1w"
    )
    sink.inputs.in_file = str(src)
    sink.inputs.RandomSeed = 3
    return sink, out


def test_sink_writes_image_and_sidecar_through_a_staging_folder(tmp_path):
    sink, out = _sink(tmp_path)
    res = sink.run(cwd=str(tmp_path))
    nii = out / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz"
    assert res.outputs.out_file == str(nii)
    assert res.outputs.out_meta == str(nii.with_name("sub-01_desc-preproc_T1w.json"))
    assert json.loads(Path(res.outputs.out_meta).read_text())["RandomSeed"] == 3
    assert nib.load(nii).get_fdata()[1, 2, 3] == 23
    assert not list(out.rglob(f"*{atomicio.TMP_MARK}*"))  # staging removed
    assert sink.inputs.base_directory == str(out)  # node inputs (and hash) unchanged


def test_sink_moves_the_sidecar_before_the_image(tmp_path, monkeypatch):
    """Killed between the two moves: the sidecar is there, the image not (never an image
    without its sidecar), and the staging folder is gone."""
    from pet_synth_app.interfaces import bids as ibids

    sink, out = _sink(tmp_path)
    real, moved = os.replace, []

    def replace_once(src, dst):
        if moved:
            raise KeyboardInterrupt
        moved.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(ibids.os, "replace", replace_once)
    with pytest.raises(KeyboardInterrupt):
        sink.run(cwd=str(tmp_path))
    assert moved == ["sub-01_desc-preproc_T1w.json"]
    assert not list(out.rglob("*.nii.gz"))
    assert not list(out.rglob(f"*{atomicio.TMP_MARK}*"))


INTERRUPT_SCRIPT = """
import subprocess, sys, time
from pet_synth_app.cli.common import guarded
from pet_synth_app.interrupt import handle_interrupts

def run():
    with handle_interrupts():
        child = subprocess.Popen(["sleep", "60"])
        print(child.pid, flush=True)
        time.sleep(60)
    return 0

sys.exit(guarded(None, run, "interrupted; rerun with the same -w/--work-dir to resume"))
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_kills_children_and_exits_with_one_line(sig, code):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPT_SCRIPT],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    child = int(proc.stdout.readline())
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code
    assert err.strip().splitlines() == [
        "petsynth: error: interrupted; rerun with the same -w/--work-dir to resume"
    ]
    time.sleep(0.2)
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")


def test_interrupted_run_ignores_exit_time_unraisable_errors(monkeypatch, capsys):
    """After the one-line "interrupted" error, exit-time "Exception ignored" tracebacks
    (a killed pool's wake-up pipe) are not printed; other errors keep the default hook."""
    from pet_synth_app.cli.common import guarded, quiet_unraisable
    from pet_synth_app.interrupt import Interrupted

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    assert guarded(None, lambda: 0, "interrupted") == 0
    assert sys.unraisablehook is sys.__unraisablehook__

    def stopped():
        raise Interrupted(signal.SIGTERM)

    assert guarded(None, stopped, "interrupted") == 143
    assert sys.unraisablehook is quiet_unraisable
    assert capsys.readouterr().err.strip() == "petsynth: error: interrupted"


def test_deterministic_option(tmp_path):
    opts = get_parser().parse_args(
        [str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--deterministic"]
    )
    s = Settings.from_options({**vars(opts), "omp_nthreads": 4, "work_dir": tmp_path / "w"})
    assert s.deterministic and s.omp_nthreads == 1  # one thread per process, always
    assert "deterministic = true" in s.to_toml(tmp_path / "c.toml").read_text()
    plain = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o", omp_nthreads=4)
    assert not plain.deterministic and plain.omp_nthreads == 4

    from pet_synth_app.workflows.outputs import _common_meta

    assert _common_meta(s.random_seed, s.deterministic)["Deterministic"] is True
    assert "Deterministic" not in _common_meta(plain.random_seed, plain.deterministic)


def test_deterministic_mode_sets_and_restores(monkeypatch):
    import torch

    from pet_synth_app import determinism

    monkeypatch.delenv(determinism.ENV, raising=False)
    assert not determinism.apply_in_process()
    before = torch.are_deterministic_algorithms_enabled()
    with determinism.deterministic_mode(True):
        assert os.environ[determinism.ENV] == "1" and os.environ["PYTHONHASHSEED"] == "0"
        assert torch.are_deterministic_algorithms_enabled()
    assert determinism.ENV not in os.environ
    assert torch.are_deterministic_algorithms_enabled() == before


def test_mem_mb_reaches_the_plugins(tmp_path):
    from pet_synth_app.workflows import base

    def plugin(yml: str | None, **kw):
        path = None
        if yml is not None:
            path = tmp_path / "p.yml"
            path.write_text(yml)
        s = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o", use_plugin=path, **kw)
        return base._plugin(s)

    assert plugin(None, nprocs=2, mem_mb=6144)[1]["memory_gb"] == 6
    assert "memory_gb" not in plugin(None, nprocs=2)[1]
    slurm = "plugin: SLURM\nplugin_args:\n  sbatch_args: '--time=1:00:00'\n"
    assert plugin(slurm, mem_mb=6000) == ("SLURM", {"sbatch_args": "--time=1:00:00 --mem=6000M"})
    assert plugin(slurm) == ("SLURM", {"sbatch_args": "--time=1:00:00"})
    own = "plugin: SLURMGraph\nplugin_args:\n  sbatch_args: '--mem 2G'\n"
    assert plugin(own, mem_mb=6000) == ("SLURMGraph", {"sbatch_args": "--mem 2G"})
    mp = "plugin: MultiProc\nplugin_args:\n  n_procs: 4\n"
    assert plugin(mp, mem_mb=2048) == ("MultiProc", {"n_procs": 4, "memory_gb": 2.0})
    mp_own = "plugin: MultiProc\nplugin_args:\n  memory_gb: 100\n"
    assert plugin(mp_own, mem_mb=2048)[1]["memory_gb"] == 100


def test_sink_rerun_with_unchanged_inputs_writes_nothing(tmp_path):
    """A rerun (same node folder) skips the write when the inputs and the written files
    are unchanged, and writes again when an output was removed or the input changed."""
    sink, out = _sink(tmp_path)
    nii = out / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz"
    sink.run(cwd=str(tmp_path))
    first = nii.stat().st_mtime_ns
    os.utime(nii, ns=(first - 10**9, first - 10**9))  # any rewrite would change it back
    res = sink.run(cwd=str(tmp_path))
    assert res.outputs.out_file == str(nii)
    assert nii.stat().st_mtime_ns != first  # the touched file counts as changed: rewritten
    second = nii.stat().st_mtime_ns
    res = sink.run(cwd=str(tmp_path))  # nothing changed: not rewritten
    assert nii.stat().st_mtime_ns == second and res.outputs.out_file == str(nii)
    assert Path(res.outputs.out_meta).is_file()
    nii.unlink()
    sink.run(cwd=str(tmp_path))  # an output removed: written again
    assert nib.load(nii).get_fdata()[1, 2, 3] == 23
    src = Path(
        sink.inputs.in_file[0] if isinstance(sink.inputs.in_file, list) else sink.inputs.in_file
    )
    img = nib.load(src)
    data = np.asanyarray(img.dataobj).copy()
    data[1, 2, 3] = 7
    nib.save(nib.Nifti1Image(data, img.affine), src)  # the input changed: written again
    sink.run(cwd=str(tmp_path))
    assert nib.load(nii).get_fdata()[1, 2, 3] == 7


def test_sink_compresses_fast_and_leaves_gzip_alone_afterwards(tmp_path):
    """Derivatives are written at zlib level 1 (gzip header XFL = 4, 'fastest'; niworkflows
    asks for 9, XFL = 2) and gzip's own class is restored after the write."""
    import gzip

    real = gzip.GzipFile
    sink, out = _sink(tmp_path)
    sink.run(cwd=str(tmp_path))
    nii = out / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz"
    assert nii.read_bytes()[8] == 4
    assert gzip.GzipFile is real


def test_sink_node_rerun_in_the_same_work_dir_writes_nothing(tmp_path):
    """Through a Nipype node (which empties the node folder before each rerun of an
    always-run interface), the second run finds its stamp and writes nothing."""
    from nipype.pipeline import engine as pe

    sink, out = _sink(tmp_path)
    node = pe.Node(sink, name="ds_t1w", base_dir=str(tmp_path / "work"))
    node.run()
    nii = out / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz"
    first = nii.stat().st_mtime_ns
    node.run()
    assert nii.stat().st_mtime_ns == first


def test_sink_removes_the_participant_report_only_when_it_writes(tmp_path):
    """A changed derivative invalidates ``sub-<label>.html`` (written again when the
    participant finishes); a rerun that writes nothing keeps it."""
    sink, out = _sink(tmp_path)
    report = out / "sub-01.html"
    out.mkdir(parents=True)
    report.write_text("<html>old</html>")
    sink.run(cwd=str(tmp_path))  # first write: the report no longer matches the outputs
    assert not report.exists()
    report.write_text("<html>new</html>")
    sink.run(cwd=str(tmp_path))  # unchanged inputs: nothing written, report kept
    assert report.read_text() == "<html>new</html>"


def test_thread_limits_make_openmp_wait_passively_unless_the_user_chose(monkeypatch):
    from pet_synth_app.threads import thread_limits

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with thread_limits(2):
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        assert os.environ["OMP_NUM_THREADS"] == "2"
    assert "OMP_WAIT_POLICY" not in os.environ  # restored
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with thread_limits(2):
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
