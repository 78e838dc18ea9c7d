"""Group level: fit the control normative models from finished participant outputs and
tabulate the synthesis quality of the controls with a real PET.

Reads only PetSynth derivatives in ``<out>`` (MNI-space SUVR PET, pseudo-normal PET and
brain mask of each finished control) and writes ``<out>/group/``::

    normative/                  voxelwise residual and control-PET mean/SD (normative.py)
                                and the OC-SVM anomaly detector (analysis/anomaly.py)
    synthesis_quality.tsv       SSIM/PSNR/RMSE/MAE of pseudo vs real PET per control
    report.html                 group QC report
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from . import __version__
from .analysis import anomaly, normative
from .analysis.clusters import write_tsv
from .analysis.metrics import image_metrics
from .bids import read_participants, strip_label
from .config import TEMPLATE_SPACE, Settings
from .errors import PetSynthError
from .layout import find_mni, sidecar

LOGGER = logging.getLogger("petsynth")
QUALITY_COLUMNS = ("participant_id", "ssim", "ssim_2d", "psnr", "rmse", "mae")


def control_outputs(
    out: Path, subject: str, roles: tuple[str, ...] = ("pet", "pseudo", "mask")
) -> dict[str, Path] | None:
    """MNI-space outputs (``roles`` of ``layout.MNI_ROLES``) of a finished participant,
    or None when the participant is unfinished or lacks one of them."""
    if not (out / f"sub-{subject}.html").is_file():
        return None
    found = find_mni(out, subject)
    files = {role: found[role] for role in roles}
    return files if all(files.values()) else None


def _load(path: Path, dtype=np.float32) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj, dtype=dtype)


def _sha(pseudo: Path) -> str | None:
    side = sidecar(pseudo)
    try:
        return json.loads(side.read_text()).get("ModelWeightsSha256")
    except (OSError, ValueError):
        return None


def _model_card(settings: Settings, sha: str | None) -> dict | None:
    """The card of the synthesis model whose weights have sha256 ``sha`` (that of the
    controls' pseudo-normal PETs): the card of ``--model-weights`` or of a shipped model;
    None when none of them matches."""
    from .config import SHIPPED_MODELS, shipped_weights_file
    from .weightfiles import card_path

    if not sha:
        return None
    candidates = [Path(settings.model_weights)] if settings.model_weights else []
    for weights in candidates + [shipped_weights_file(name) for name in SHIPPED_MODELS]:
        try:
            card = json.loads(card_path(weights).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(card, dict) and card.get("sha256") == sha:
            return card
    return None


def in_training_message(subjects: list[str]) -> str:
    """The warning (log and group report) that the controls ``subjects``
    (``sub-<label>``) trained or validated the synthesis model."""
    return (
        f"{', '.join(subjects)} trained or validated the synthesis model (its model card "
        "lists these labels for a training dataset with this dataset's Name): their "
        "residuals are in-sample (the model fits them better than new brains), so the "
        "normative residual SD is too narrow and control-referenced Z maps and their "
        "cluster calibration over-call (too many false-positive clusters). Fit the group "
        "level on controls that did not train the model (--participant-label)"
    )


def check_controls_in_training(
    settings: Settings, subjects: list[str], sha: str | None
) -> list[str] | None:
    """The controls ``subjects`` (labels) that trained or validated the synthesis model
    with weights sha256 ``sha``, as ``sub-<label>`` (``synthesis.weights.
    controls_in_training`` on the model's card and this dataset's Name; logged as a
    warning); [] when none, None when no card of that model is found (also logged)."""
    from .bids import dataset_name
    from .synthesis.weights import controls_in_training

    card = _model_card(settings, sha)
    if card is None:
        LOGGER.warning(
            "group: cannot tell whether the controls trained the synthesis model: no model "
            "card with its sha256 (%s) among --model-weights and the shipped models (give "
            "the group level the participant level's --model-weights)",
            sha or "not recorded",
        )
        return None
    labels = controls_in_training(card, dataset_name(settings.bids_dir), subjects)
    overlap = [f"sub-{s}" for s in labels]
    if overlap:
        LOGGER.warning("group: %s", in_training_message(overlap))
    return overlap


def run_group_level(settings: Settings) -> int:
    """Fit ``<out>/group/normative`` from the controls and write the quality table."""
    out = Path(settings.output_dir)
    table = read_participants(settings.bids_dir)
    controls = sorted(s for s, row in table.items() if row.get("group", "").lower() == "control")
    if settings.participant_label:
        wanted = {strip_label(s, "sub-") for s in settings.participant_label}
        controls = [s for s in controls if s in wanted]
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
    in_training = check_controls_in_training(settings, list(found), next(iter(shas.values())))
    t0, c0 = time.time(), time.process_time()
    ref = nib.load(str(next(iter(found.values()))["pet"]))
    maps = _control_maps(found, ref, settings.z_fwhm)
    rows = []
    for i, (subject, (pet, pseudo, mask, view, quality)) in enumerate(
        _read_and_score(out, found, ref.shape[:3], settings.omp_nthreads)
    ):
        rows.append({"participant_id": f"sub-{subject}", **quality})
        try:
            normative.put_control(maps, i, pet, pseudo, mask, view, settings.histogram_matching)
        except ValueError as exc:
            raise PetSynthError(
                f"cannot fit the normative model: {exc}", str(found[subject]["pet"])
            ) from None
        del pet, pseudo, mask, view  # a few controls' full volumes at a time
    LOGGER.info(
        "group: %d controls read and scored (%d voxels each, %.2f GB) in %.0f s (CPU %.0f s)",
        len(found),
        maps.pet.shape[1],
        (maps.pet.nbytes + maps.residual.nbytes + maps.brain.nbytes + maps.view.nbytes) / 2**30,
        time.time() - t0,
        time.process_time() - c0,
    )
    t1, c1 = time.time(), time.process_time()
    meta = {
        "participants": [f"sub-{s}" for s in found],
        "model_sha256": next(iter(shas.values())),
        "controls_in_model_training": in_training,
        "software": f"petsynth {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "space": TEMPLATE_SPACE,
    }
    try:
        model = normative.fit_from_maps(maps, ref.affine, meta, settings.histogram_matching)
    except ValueError as exc:
        raise PetSynthError(f"cannot fit the normative model: {exc}", str(out)) from None
    folder = out / "group" / "normative"
    staging = normative.save(model, folder.with_name("normative.new"))
    del model
    LOGGER.info(
        "group: normative model in %.0f s (CPU %.0f s)", time.time() - t1, time.process_time() - c1
    )
    _write_cluster_null(settings, found, maps, ref.affine, staging)
    maps.residual = np.zeros((0, 0), np.float32)  # not needed by the detector: free it
    n_synthetic = fit_anomaly_detector(settings, controls, found, maps, ref, staging)
    shutil.rmtree(folder, ignore_errors=True)  # never a mix of old and new models
    staging.rename(folder)
    write_tsv(rows, out / "group" / "synthesis_quality.tsv", QUALITY_COLUMNS)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in QUALITY_COLUMNS[1:]}
    LOGGER.info(
        "group: normative model of %d controls in %s (%.0f s); synthesis quality on controls: "
        "SSIM %.3f, PSNR %.1f dB, RMSE %.3f, MAE %.3f",
        len(found),
        folder,
        time.time() - t0,
        mean["ssim"],
        mean["psnr"],
        mean["rmse"],
        mean["mae"],
    )
    LOGGER.info(
        "rerun the participant level to write control-referenced Z maps and OC-SVM anomaly maps"
    )
    _write_group_citation(settings, len(found), n_synthetic)
    return 0


def _read_one(
    out: Path, subject: str, files: dict[str, Path], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """A control's MNI PET and pseudo-normal PET (float64 SUVR), brain mask, field of
    view and the synthesis quality of its pseudo-normal PET (``image_metrics`` in both)."""
    pet = np.asanyarray(nib.load(str(files["pet"])).dataobj, dtype=np.float64)
    pseudo = np.asanyarray(nib.load(str(files["pseudo"])).dataobj, dtype=np.float64)
    mask = np.asanyarray(nib.load(str(files["mask"])).dataobj) > 0
    if pet.shape != tuple(shape) or pseudo.shape != tuple(shape):
        raise PetSynthError("MNI grids differ between controls", str(files["pet"]))
    view = coverage_of(out, subject, mask.shape)
    try:
        quality = image_metrics(pseudo, pet, mask & view)
    except ValueError as exc:
        raise PetSynthError(
            f"cannot compare pseudo and real PET: {exc}", str(files["pet"])
        ) from None
    return pet, pseudo, mask, view, quality


def _read_and_score(
    out: Path, found: dict[str, dict[str, Path]], shape: tuple[int, ...], workers: int
) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]]]:
    """``(subject, _read_one(...))`` of each control of ``found``, in order, read and
    scored by ``workers`` threads (decompression and the SSIM filters release the GIL),
    at most ``workers + 1`` controls ahead of the caller (bounded memory)."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(found.items())
    workers = max(1, int(workers))
    if workers == 1:
        for subject, files in items:
            yield subject, _read_one(out, subject, files, shape)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="group-read")
    try:
        pending = deque()
        for subject, files in items:
            pending.append((subject, pool.submit(_read_one, out, subject, files, shape)))
            if len(pending) > workers:
                subject0, future = pending.popleft()
                yield subject0, future.result()
        while pending:
            subject0, future = pending.popleft()
            yield subject0, future.result()
    finally:  # on an error or an interrupt, drop the queued controls and do not wait
        pool.shutdown(wait=False, cancel_futures=True)


def coverage_of(out: Path, subject: str, shape: tuple[int, ...]) -> np.ndarray:
    """A control's PET field of view in MNI (bool; everywhere when its outputs predate
    the coverage mask)."""
    path = find_mni(out, subject)["coverage"]
    if path is None:
        return np.ones(shape, bool)
    view = np.asanyarray(nib.load(str(path)).dataobj) > 0
    if view.shape != tuple(shape):
        raise PetSynthError("MNI grids differ between controls", str(path))
    return view


def _control_maps(
    found: dict[str, dict[str, Path]], ref: nib.Nifti1Image, fwhm_mm: float
) -> normative.ControlMaps:
    """Empty ``normative.ControlMaps`` for the controls ``found`` on the grid of ``ref``:
    the union and intersection of their MNI brain masks, read one at a time, and the
    analysis smoothing ``fwhm_mm`` (mm)."""
    shape = ref.shape[:3]
    union = np.zeros(shape, bool)
    inter = np.ones(shape, bool)
    for files in found.values():
        mask = np.asanyarray(nib.load(str(files["mask"])).dataobj) > 0
        if mask.shape != tuple(shape):
            raise PetSynthError("MNI grids differ between controls", str(files["mask"]))
        union |= mask
        inter &= mask
    return normative.empty_controls(
        union, inter, len(found), True, fwhm_mm, nib.affines.voxel_sizes(ref.affine)
    )


def _write_cluster_null(
    settings: Settings,
    found: dict[str, dict[str, Path]],
    maps: normative.ControlMaps,
    affine: np.ndarray,
    folder: Path,
) -> None:
    """The leave-one-out cluster null of the control-referenced maps
    (``analysis.calibration``) into the staged normative ``folder``; with fewer than 3
    controls none (the maps are then reported as uncalibrated)."""
    from .analysis import calibration
    from .config import GM_THRESHOLD

    if len(found) < 3:
        LOGGER.warning(
            "group: %d controls are too few for a cluster null: clusters stay uncalibrated",
            len(found),
        )
        return
    t0, c0 = time.time(), time.process_time()
    paths = {s: find_mni(Path(settings.output_dir), s)["gm"] for s in found}
    for subject, path in paths.items():
        if path is None:
            LOGGER.warning("group: sub-%s has no MNI GM map: no cluster null", subject)
            return

    def gm_row(path: Path) -> np.ndarray:  # a control's GM at the controls' voxels
        prob = _load(path, np.float64)
        if prob.shape != maps.voxels.shape:
            raise PetSynthError("MNI grids differ between controls", str(path))
        return (prob > GM_THRESHOLD)[maps.voxels]

    from concurrent.futures import ThreadPoolExecutor

    gm = np.zeros(maps.brain.shape, bool)
    with ThreadPoolExecutor(max(1, settings.omp_nthreads)) as pool:  # decompression
        for i, row in enumerate(pool.map(gm_row, paths.values())):
            gm[i] = row
    null = calibration.loo_cluster_null_maps(
        maps,
        gm,
        affine,
        threshold=settings.z_threshold,
        min_volume_mm3=settings.min_cluster_mm3,
        workers=settings.omp_nthreads,
    )
    calibration.save_null(null, folder)
    LOGGER.info(
        "group: cluster null from %d controls (leave-one-out) in %.0f s (CPU %.0f s): clusters "
        "per control %.2f (synthesis-based Z), %.2f (control-PET Z)",
        len(found),
        time.time() - t0,
        time.process_time() - c0,
        *(np.mean([len(s) for s in null["scans"][k]]) for k in ("hypometabolism", "controlpet")),
    )


def fit_anomaly_detector(
    settings: Settings,
    controls: list[str],
    found: dict[str, dict[str, Path]],
    maps: normative.ControlMaps,
    ref: nib.Nifti1Image,
    folder: Path,
) -> int:
    """Fit the OC-SVM detector into ``folder`` on the controls' real PET (``maps``, rows
    in the order of ``found``), plus (with ``--augment-synthetic``) the pseudo-normal PET
    of finished controls without a PET; returns the number of synthetic PETs used.

    Every OC-SVM needs every training PET at its voxel, so the detector covers only what
    all of them cover (``maps.view``, the PET fields of view): controls whose field of
    view misses more than ``config.MIN_BRAIN_COVERAGE`` of their brain are left out of
    it (while 2 others remain), the others count only inside their view. The training
    volumes are rebuilt one at a time (``compact.Volumes``)."""
    from .analysis.compact import Volumes
    from .config import MIN_BRAIN_COVERAGE
    from .preproc.pet import coverage_fraction
    from .preproc.templates import get_template

    out = Path(settings.output_dir)
    rows = list(range(len(found)))
    brains = [maps.brain[i] for i in rows]
    if maps.view is not None:
        fractions = [coverage_fraction(maps.view[i], maps.brain[i]) for i in rows]
        brains = [maps.brain[i] & maps.view[i] for i in rows]
        keep = [i for i, f in enumerate(fractions) if round(f, 3) >= MIN_BRAIN_COVERAGE]
        if len(keep) >= 2 and len(keep) < len(rows):
            left = [s for i, s in enumerate(found) if i not in keep]
            LOGGER.warning(
                "group: the PET field of view of %s covers < %g %% of the brain: left out "
                "of the OC-SVM detector (kept in the normative model inside their view)",
                ", ".join(f"sub-{s}" for s in left),
                100 * MIN_BRAIN_COVERAGE,
            )
            found = {s: f for i, (s, f) in enumerate(found.items()) if i in keep}
            rows = keep
            brains = [brains[i] for i in keep]
    synthetic: dict[str, Path] = {}
    if settings.augment_synthetic:
        for s in controls:
            if s in found:
                continue
            files = control_outputs(out, s, ("pseudo", "mask"))
            if files and find_mni(out, s)["pet"] is None:
                synthetic[s] = files
        if not synthetic:
            LOGGER.warning(
                "--augment-synthetic: no finished control without PET has a "
                "pseudo-normal PET; the detector uses real PET only"
            )
    syn_voxels, syn_pets, syn_masks = _synthetic_rows(synthetic, ref.shape[:3])
    train = Volumes(
        (maps.voxels, [maps.pet[i] for i in rows]), (syn_voxels, syn_pets), dtype=np.float32
    )
    train_masks = Volumes((maps.voxels, brains), (syn_voxels, syn_masks), dtype=bool)
    gm = get_template("GM", settings.mni_resolution)
    if gm.shape[:3] != ref.shape[:3] or not np.allclose(gm.affine, ref.affine, atol=1e-3):
        raise PetSynthError(
            "participant outputs are not on the template grid of --mni-resolution", str(out)
        )
    meta = {
        "participants_real": [f"sub-{s}" for s in found],
        "participants_synthetic": [f"sub-{s}" for s in synthetic],
        "software": f"petsynth {__version__}",
        "space": TEMPLATE_SPACE,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        result = anomaly.fit(
            train,
            train_masks,
            np.asanyarray(gm.dataobj),
            ref.affine,
            folder,
            nu=settings.ocsvm_nu,
            gamma=settings.ocsvm_gamma,
            epochs=settings.siamese_epochs,
            seed=settings.random_seed,
            threads=settings.omp_nthreads,
            meta=meta,
        )
    except ValueError as exc:
        raise PetSynthError(f"cannot fit the OC-SVM anomaly detector: {exc}", str(out)) from None
    LOGGER.info(
        "group: OC-SVM anomaly detector on %d real + %d synthetic control PET, %d voxels "
        "(autoencoder %.0f s, OC-SVMs %.0f s; CPU s per phase: %s)",
        len(found),
        len(synthetic),
        result.n_voxels,
        result.seconds_autoencoder,
        result.seconds_ocsvm,
        ", ".join(f"{k} {v:.0f}" for k, v in result.cpu_seconds.items()),
    )
    return len(synthetic)


def _synthetic_rows(
    synthetic: dict[str, dict[str, Path]], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pseudo-normal PETs (float32 SUVR) and brain masks of the synthetic controls
    as rows at the union of their brain masks (bool grid), read one at a time."""
    voxels = np.zeros(shape, bool)
    for files in synthetic.values():
        mask = _load(files["mask"], np.uint8) > 0
        if mask.shape != tuple(shape):
            raise PetSynthError("MNI grids differ between controls", str(files["mask"]))
        voxels |= mask
    pets = np.zeros((len(synthetic), int(voxels.sum())), np.float32)
    masks = np.zeros(pets.shape, bool)
    for i, files in enumerate(synthetic.values()):
        pet = _load(files["pseudo"])
        if pet.shape != tuple(shape):
            raise PetSynthError("MNI grids differ between controls", str(files["pseudo"]))
        pets[i] = pet[voxels]
        masks[i] = (_load(files["mask"], np.uint8) > 0)[voxels]
    return voxels, pets, masks


def _write_group_citation(settings: Settings, n_real: int, n_syn: int) -> None:
    """Methods boilerplate of the group level."""
    from .boilerplate import write_citation

    text = (
        f"At the group level, the normative models were fitted on {n_real} healthy "
        "controls: the voxelwise robust mean and SD of the residual between real and "
        "pseudo-normal PET (for control-referenced Z maps) and the OC-SVM anomaly detector "
        "[@zotova2021; @alaverdyan2020; @scholkopf2001], trained on the controls' real PET"
        + (
            f" and the pseudo-normal PET of {n_syn} control{'s' * (n_syn > 1)} without a PET "
            "scan (hybrid database)"
            if n_syn
            else ""
        )
        + f", with a siamese autoencoder trained for {settings.siamese_epochs} epochs "
        f"(random seed {settings.random_seed}), nu = {settings.ocsvm_nu:g} and gamma = "
        f"{settings.ocsvm_gamma}."
    )
    write_citation(Path(settings.output_dir) / "logs", "group", text)


__all__ = [
    "control_outputs",
    "check_controls_in_training",
    "in_training_message",
    "run_group_level",
]
