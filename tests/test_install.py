"""Offline operation and container recipes (Docker/Apptainer engines are not available here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT

BLOCK_NETWORK = textwrap.dedent(
    """
    import socket
    def _blocked(*args, **kwargs):
        raise OSError("network access attempted")
    socket.socket.connect = _blocked
    socket.create_connection = _blocked
    socket.getaddrinfo = _blocked
    """
)


def test_runs_offline(tmp_path):
    """Importing the app, its templates, atlases, deepbet weights and the shipped synthesis
    model needs no network."""
    code = BLOCK_NETWORK + textwrap.dedent(
        """
        import importlib.util, pathlib
        import pet_synth_app.cli.run, pet_synth_app.workflows.base
        from pet_synth_app.preproc.templates import get_template
        from pet_synth_app.analysis.atlas import load_atlas
        for kind in ("T1w", "mask", "GM", "WM", "CSF"):
            assert get_template(kind, 2).shape == (99, 117, 95)
        img, labels = load_atlas("harvard_oxford")
        assert len(labels) > 50
        spec = importlib.util.find_spec("deepbet")
        site = pathlib.Path(spec.origin).parents[1]
        assert (site / "data" / "models" / "model.pt").is_file()
        import pet_synth_app.cli.train, pet_synth_app.cli.evaluate, monai
        from pet_synth_app.synthesis.weights import default_weights, load_generator
        gen, card = load_generator(default_weights())  # shipped, sha256-checked
        assert card["model"] == "cyclegan-mse" and "simulated" in card["intended_use"].lower()
        print("offline-ok")
        """
    )
    env = dict(os.environ, HOME=str(tmp_path), NO_ET="1")
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "offline-ok" in res.stdout


def test_container_recipes_in_step_with_install():
    docker = (ROOT / "Dockerfile").read_text()
    sing = (ROOT / "singularity.def").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    torch_pins = {
        re.search(r"TORCH_VERSION=(\S+)", docker).group(1),
        re.search(r"TORCH_VERSION=(\S+)", sing).group(1),
        re.search(r"torch==([\d.]+)", ci).group(1),
    }
    assert torch_pins == {"2.13.0"}
    assert 'ENTRYPOINT ["petsynth"]' in docker
    # runs as any UID on a read-only root: nothing unpacked at run time, /work writable
    assert "USER petsynth" in docker and "chmod 1777 /work" in docker
    assert "TEMPLATEFLOW" not in docker and "TEMPLATEFLOW" not in sing
    assert "exec petsynth" in sing
    for recipe in (docker, sing):
        assert "NO_ET=1" in recipe and "MPLCONFIGDIR" in recipe


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in readme
    assert ci.rstrip().splitlines()[-2].strip() == ".venv/bin/python -m pytest"


def test_cli_as_unprivileged_home(tmp_path):
    """The CLI must not need a writable HOME (containers run under arbitrary UIDs)."""
    home = tmp_path / "ro_home"
    home.mkdir()
    home.chmod(0o555)
    env = dict(os.environ, HOME=str(home), NO_ET="1", MPLCONFIGDIR=str(tmp_path / "mpl"))
    res = subprocess.run(
        [sys.executable, "-m", "pet_synth_app.cli.run", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0 and "petsynth" in res.stdout
    assert list(Path(home).iterdir()) == []


def test_template_names_are_templateflows_and_the_import_writes_nothing(tmp_path):
    """niworkflows lists TemplateFlow's templates at import: PetSynth ships their names
    (interfaces/bids.TEMPLATE_NAMES), the same as the installed templateflow's skeleton,
    and importing the DataSink neither reads a user's TEMPLATEFLOW_HOME nor writes one."""
    import zipfile

    import templateflow

    skeleton = Path(templateflow.__file__).parent / "conf" / "templateflow-skel.zip"
    with zipfile.ZipFile(skeleton) as z:
        names = {n.split("/")[0] for n in z.namelist() if n.startswith("tpl-")}
    shipped = ROOT / "pet_synth_app" / "data" / "templateflow"
    assert {p.name for p in shipped.iterdir()} == names
    code = (
        "import time; t = time.perf_counter(); import pet_synth_app.interfaces.bids; "
        "from niworkflows.interfaces.bids import STANDARD_SPACES as s; "
        "print(len(s), 'MNI152NLin2009aSym' in s, time.perf_counter() - t)"
    )
    home = tmp_path / "home"  # what templateflow would fill
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home), "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[:2] == [str(len(names)), "True"]
    assert not home.exists() and not (tmp_path / ".cache").exists()
