"""The Dockerfile and singularity.def install the same things in the same way.

No Apptainer can be installed on the machines that test PetSynth, so singularity.def is never
built here: this test parses both files and checks that the definition file runs the same
install steps as the Dockerfile (which scripts/container-smoke.sh builds and runs): same base
image, same torch pin and source, same lock-file install, same template pre-load, same
environment variables that matter at build and run time. It also checks that the lock file
pins every dependency of setup.cfg within its range.
"""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SINGULARITY = ROOT / "singularity.def"
LOCK = ROOT / "requirements.lock"

# variables that differ on purpose: the container kind, and HOME (Apptainer binds the user's)
DIFFERENT_ON_PURPOSE = {"PETSYNTH_CONTAINER", "HOME"}


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined; comments and blank lines dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append((cur + line).strip())
        cur = ""
    if cur:
        out.append(cur.strip())
    return out


def _steps(command: str) -> list[str]:
    return [" ".join(s.split()) for s in command.split(" && ")]


def _env(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words if "=" in w)


def parse_dockerfile(text: str) -> dict:
    info = {"from": None, "args": {}, "env": {}, "copy": [], "steps": []}
    for line in _logical_lines(text):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            info["from"] = rest.strip()
        elif word == "ARG":
            name, _, default = rest.strip().partition("=")
            info["args"][name] = default
        elif word == "ENV":
            info["env"].update(_env(shlex.split(rest)))
        elif word == "COPY":
            info["copy"].append(tuple(rest.split()))
        elif word == "RUN":
            info["steps"] += _steps(rest)
    return info


def parse_definition(text: str) -> dict:
    header, sections, name = {}, {}, None
    for raw in text.splitlines():
        if raw.startswith("%"):
            name = raw.split()[0][1:]
            sections[name] = ""
        elif name is None:
            key, sep, value = raw.partition(":")
            if sep and not raw.startswith("#"):
                header[key.strip()] = value.strip()
        else:
            sections[name] += raw + "\n"
    info = {"from": header.get("From"), "args": {}, "env": {}, "build_env": {}, "steps": []}
    info["copy"] = [tuple(line.split()) for line in _logical_lines(sections.get("files", ""))]
    for line in _logical_lines(sections.get("environment", "")):
        info["env"].update(_env(shlex.split(line.removeprefix("export "))))
    for line in _logical_lines(sections.get("post", "")):
        if line.startswith("export "):
            info["build_env"].update(_env(shlex.split(line.removeprefix("export "))))
        elif re.fullmatch(r"[A-Z_]+=\S*", line):
            name, _, value = line.partition("=")
            # NAME=${NAME:-default}: a build argument with its default
            m = re.fullmatch(r"\$\{" + name + r":-(.*)\}", value)
            info["args"][name] = m.group(1) if m else value
        else:
            info["steps"] += _steps(line)
    return info


@pytest.fixture(scope="module")
def docker():
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def sif():
    return parse_definition(SINGULARITY.read_text())


def test_same_base_image(docker, sif):
    assert docker["from"] == sif["from"] == "python:3.11-slim-bookworm"


def test_same_torch_pin_and_variant(docker, sif):
    assert docker["args"] == sif["args"]
    version = docker["args"]["TORCH_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert docker["args"]["TORCH_VARIANT"] == "cpu"
    assert f"torch=={version}" in LOCK.read_text().splitlines()


def test_same_install_steps(docker, sif):
    # the Dockerfile's extra step makes the default non-root user (Apptainer runs as the caller)
    steps = [s for s in docker["steps"] if not s.startswith("useradd ")]
    assert steps == sif["steps"]
    torch = 'pip install $torch_src -c /opt/petsynth/requirements.lock "torch==${TORCH_VERSION}"'
    assert torch in steps
    assert "pip install -r /opt/petsynth/requirements.lock" in steps
    assert "pip install --no-deps /src/petsynth" in steps
    assert "pip check" in steps
    npm = (
        "NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt "
        "npm install -g bids-validator@1.15.0"
    )
    assert npm in steps  # input validation in the image (npm also trusts the system CAs)
    # the import check (niworkflows reads the shipped template names, writes nothing) and
    # the nilearn-based MNI templates
    assert any('python -c "import pet_synth_app.interfaces.bids"' in s for s in steps)
    assert any("get_template" in s for s in steps)


def test_same_files(docker, sif):
    assert docker["copy"] == sif["copy"]
    assert ("requirements.lock", docker["env"]["PETSYNTH_LOCK_FILE"]) in docker["copy"]


def test_same_environment(docker, sif):
    run_env = {k: v for k, v in docker["env"].items() if k not in DIFFERENT_ON_PURPOSE}
    build_only = {"DEBIAN_FRONTEND", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
    assert {k: v for k, v in run_env.items() if k not in build_only} == {
        k: v for k, v in sif["env"].items() if k not in DIFFERENT_ON_PURPOSE
    }
    # what the build steps see
    for key, value in run_env.items():
        if key != "PETSYNTH_LOCK_FILE":
            assert sif["build_env"].get(key) == value, key
    # nothing written under the (read-only) image at run time
    for key in ("MPLCONFIGDIR", "XDG_CACHE_HOME"):
        assert docker["env"][key].startswith("/tmp/")
    # no TemplateFlow folder: interfaces/bids.py points niworkflows at the shipped names
    assert not any(k.startswith("TEMPLATEFLOW") for k in [*docker["env"], *sif["env"]])


def test_lock_pins_every_dependency_within_setup_cfg_ranges():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip())
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    for line in cfg["options"]["install_requires"].strip().splitlines():
        req = Requirement(line)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{name} is not in requirements.lock"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {req}"


def test_lock_hash_recorded(tmp_path, monkeypatch):
    import hashlib
    import json
    import tomllib

    from pet_synth_app.bids import write_derivative_description
    from pet_synth_app.config import Settings

    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    settings = Settings(bids_dir=bids, output_dir=out, analysis_level="participant")
    monkeypatch.delenv("PETSYNTH_LOCK_FILE", raising=False)
    toml = tomllib.loads(settings.to_toml(out / "a.toml").read_text())
    desc = json.loads(write_derivative_description(bids, out).read_text())
    assert "install" not in toml and "RequirementsLockSHA256" not in desc["GeneratedBy"][0]

    monkeypatch.setenv("PETSYNTH_LOCK_FILE", str(LOCK))
    sha = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    toml = tomllib.loads(settings.to_toml(out / "b.toml").read_text())
    assert toml["install"]["requirements_lock_sha256"] == sha
    desc = json.loads(write_derivative_description(bids, out).read_text())
    assert desc["GeneratedBy"][0]["RequirementsLockSHA256"] == sha
