"""Group level: fit the control normative models from finished participant outputs and
tabulate the synthesis quality of the controls with a real PET.

Reads only PetSynth derivatives in ``<out>`` (MNI-space SUVR PET, pseudo-normal PET and
brain mask of each finished control) and writes ``<out>/group/``::

    normative/                  voxelwise residual and control-PET mean/SD (normative.py)
    synthesis_quality.tsv       SSIM/PSNR/RMSE/MAE of pseudo vs real PET per control
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from . import __version__
from .analysis import normative
from .analysis.clusters import write_tsv
from .analysis.metrics import image_metrics
from .bids import find_mni_derivatives, read_participants
from .config import TEMPLATE_SPACE, Settings
from .errors import PetSynthError

LOGGER = logging.getLogger("petsynth")
QUALITY_COLUMNS = ("participant_id", "ssim", "ssim_2d", "psnr", "rmse", "mae")


def control_outputs(out: Path, subject: str) -> dict[str, Path] | None:
    """MNI-space real PET, pseudo-normal PET and brain mask of a finished participant."""
    if not (out / f"sub-{subject}.html").is_file():
        return None
    found = find_mni_derivatives(out, subject)
    files = {role: found[role] for role in ("pet", "pseudo", "mask")}
    return files if all(files.values()) else None


def _sha(pseudo: Path) -> str | None:
    side = pseudo.with_name(pseudo.name.replace(".nii.gz", ".json"))
    try:
        return json.loads(side.read_text()).get("ModelWeightsSha256")
    except (OSError, ValueError):
        return None


def run_group_level(settings: Settings) -> int:
    """Fit ``<out>/group/normative`` from the controls and write the quality table."""
    out = Path(settings.output_dir)
    table = read_participants(settings.bids_dir)
    controls = sorted(s for s, row in table.items() if row.get("group", "").lower() == "control")
    if settings.participant_label:
        controls = [s for s in controls if s in settings.participant_label]
    found = {s: f for s in controls if (f := control_outputs(out, s)) is not None}
    if len(found) < 2:
        raise PetSynthError(
            f"the group level needs at least 2 finished controls with PET and a pseudo-normal "
            f"PET in OUTPUT_DIR, found {len(found)} (run the participant level first)",
            str(out),
        )
    shas = {s: _sha(f["pseudo"]) for s, f in found.items()}
    if len(set(shas.values())) > 1:
        raise PetSynthError(
            "controls' pseudo-normal PETs come from different synthesis models: rerun the "
            "participant level with one --model-weights",
            str(out),
        )
    t0 = time.time()
    ref = nib.load(str(next(iter(found.values()))["pet"]))
    pets, pseudos, masks, rows = [], [], [], []
    for subject, files in found.items():
        pet = np.asanyarray(nib.load(str(files["pet"])).dataobj, dtype=np.float64)
        pseudo = np.asanyarray(nib.load(str(files["pseudo"])).dataobj, dtype=np.float64)
        mask = np.asanyarray(nib.load(str(files["mask"])).dataobj) > 0
        if pet.shape != ref.shape[:3]:
            raise PetSynthError("MNI grids differ between controls", str(files["pet"]))
        pets.append(pet)
        pseudos.append(pseudo)
        masks.append(mask)
        try:
            quality = image_metrics(pseudo, pet, mask)
        except ValueError as exc:
            raise PetSynthError(f"cannot compare pseudo and real PET: {exc}",
                                str(files["pet"])) from None  # fmt: skip
        rows.append({"participant_id": f"sub-{subject}", **quality})
    meta = {
        "participants": [f"sub-{s}" for s in found],
        "model_sha256": next(iter(shas.values())),
        "software": f"petsynth {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "space": TEMPLATE_SPACE,
    }
    try:
        model = normative.fit_from_controls(pets, pseudos, masks, ref.affine, meta,
                                            settings.histogram_matching)  # fmt: skip
    except ValueError as exc:
        raise PetSynthError(f"cannot fit the normative model: {exc}", str(out)) from None
    folder = normative.save(model, out / "group" / "normative")
    write_tsv(rows, out / "group" / "synthesis_quality.tsv", QUALITY_COLUMNS)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in QUALITY_COLUMNS[1:]}
    LOGGER.info(
        "group: normative model of %d controls in %s (%.0f s); synthesis quality on controls: "
        "SSIM %.3f, PSNR %.1f dB, RMSE %.3f, MAE %.3f",
        len(found), folder, time.time() - t0, mean["ssim"], mean["psnr"], mean["rmse"],
        mean["mae"],
    )  # fmt: skip
    LOGGER.info("rerun the participant level to write control-referenced Z maps")
    return 0


__all__ = ["control_outputs", "run_group_level"]
