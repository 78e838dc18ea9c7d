"""What ``petsynth-train`` does: fit a synthesis model on a BIDS dataset's healthy controls.

The training inputs are the participant workflow's own MNI-space derivatives (T1w,
brain mask, SUVR PET), so training and inference see identical images: either an
existing PetSynth output folder (``--derivatives``) or a preprocessing-only run that this
command starts into ``MODEL_DIR/preproc``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from .config import TEMPLATE_SPACE, Settings
from .errors import PetSynthError, UsageError

LOGGER = logging.getLogger("petsynth.train")


def _check_args(opts: argparse.Namespace) -> None:
    from .synthesis.inputs import n_channels
    from .synthesis.registry import get_spec, prior_models, supports_prior

    if not opts.bids_dir.is_dir():
        raise UsageError("BIDS_DIR is not a directory", str(opts.bids_dir))
    if opts.unpaired and get_spec(opts.model).paired:
        raise UsageError(f"--unpaired: {opts.model} needs paired T1w/PET (use cyclegan)")
    if opts.prior and not supports_prior(opts.model):
        raise UsageError(
            f"--prior: {opts.model} does not take a prior ({', '.join(prior_models())} do)"
        )
    n_in = n_channels(opts.input_representation)
    if opts.prior and not supports_prior(opts.model, n_in):
        raise UsageError(
            f"--prior: {opts.model} takes a prior only with a single-channel input, not "
            f"{opts.input_representation} ({', '.join(prior_models(n_in))} do)"
        )
    if opts.prior_anatomy and not opts.prior:
        raise UsageError("--prior-anatomy adjusts the mean-image prior: add --prior")
    if opts.prior_anatomy and opts.input_representation != "mni-pv":
        raise UsageError(
            "--prior-anatomy needs the GM/CSF fractions of --input-representation mni-pv"
        )
    if opts.prior_anatomy and get_spec(opts.model).kind != "slices":
        raise UsageError(f"--prior-anatomy: {opts.model} is not a semi-3D CycleGAN")
    if not 0 < opts.val_fraction < 1:
        raise UsageError("--val-fraction must be between 0 and 1")
    if opts.folds == 1 or opts.folds < 0:
        raise UsageError("--folds must be 0 (off) or >= 2")
    if opts.fold is not None and not (opts.folds and 1 <= opts.fold <= opts.folds):
        raise UsageError("--fold needs --folds K and 1 <= fold <= K")
    if opts.derivatives is not None and not opts.derivatives.is_dir():
        raise UsageError("--derivatives is not a directory", str(opts.derivatives))


def select_participants(bids_dir: Path, groups: list[str], labels: list[str]) -> list[str]:
    """Participants to train on: ``labels`` if given, else those whose group matches."""
    from .bids import read_participants

    if labels:
        return sorted({label.removeprefix("sub-") for label in labels})
    table = read_participants(bids_dir)
    wanted = {g.lower() for g in groups}
    chosen = sorted(s for s, row in table.items() if row.get("group", "").lower() in wanted)
    if not chosen:
        raise PetSynthError(
            f"no participant with group {'/'.join(groups)} in participants.tsv",
            str(bids_dir / "participants.tsv"),
        )
    return chosen


def find_training_files(deriv: Path, subject: str) -> dict[str, Path | None] | None:
    """MNI-space T1w, brain mask and SUVR PET of ``subject`` in a PetSynth output folder
    (None without T1w and mask)."""
    from .layout import find_mni

    found = find_mni(deriv, subject)
    files = {role: found[role] for role in ("t1w", "mask", "pet")}
    return files if files["t1w"] and files["mask"] else None


PREPROC_OPTIONS = ("nprocs", "omp_nthreads", "random_seed", "device", "sloppy", "mni_resolution")
"""Options of ``petsynth-train`` that its preprocessing run takes as they are."""


def preprocessing_settings(opts: argparse.Namespace, subjects: list[str]) -> Settings:
    """Settings of the preprocessing-only participant run into ``MODEL_DIR/preproc``."""
    options = {k: getattr(opts, k) for k in PREPROC_OPTIONS}
    return Settings.from_options(
        {
            **options,
            "bids_dir": opts.bids_dir,
            "output_dir": opts.model_dir / "preproc",
            "work_dir": opts.work_dir or opts.model_dir / "work",
            "participant_label": subjects,
            "skip_synthesis": True,
            # the affine representation's target: the T1w-space PET through the affine
            "output_spaces": [TEMPLATE_SPACE]
            if opts.input_representation != "affine"
            else ["T1w", TEMPLATE_SPACE],
        }
    )


def _preprocess(opts: argparse.Namespace, subjects: list[str]) -> Path:
    from .runner import run_participant

    settings = preprocessing_settings(opts, subjects)
    out = settings.output_dir
    LOGGER.info("preprocessing %d participant(s) into %s", len(subjects), out)
    if run_participant(settings):
        LOGGER.warning("some participants failed preprocessing; training on the others")
    return out


def split_folds(names: list[str], folds: int, seed: int) -> list[list[str]]:
    """Deterministic k-fold partition of ``names`` (shuffled with ``seed``)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(names))
    return [sorted(names[i] for i in order[k::folds]) for k in range(folds)]


def train_from_args(opts: argparse.Namespace) -> int:
    """Select, preprocess (or find), load, split and train; writes MODEL_DIR."""
    _check_args(opts)
    from .plan import resolve_device
    from .threads import default_threads, thread_limits

    device = resolve_device(opts.device)
    with thread_limits(default_threads(opts.nprocs, opts.omp_nthreads)):
        return _train(opts, device)


def _train(opts: argparse.Namespace, device: str) -> int:
    from .bids import dataset_name
    from .layout import find_inputs
    from .synthesis.inputs import InputSources
    from .synthesis.registry import get_spec, model_config
    from .synthesis.training import DEFAULT_PET_SCALE, load_participant

    subjects = select_participants(opts.bids_dir, opts.group, opts.participant_label)
    for name in opts.val_participants:
        if name.removeprefix("sub-") not in subjects:
            raise UsageError(f"validation participant {name} is not among the training set")
    deriv = opts.derivatives or _preprocess(opts, subjects)
    pet_scale = opts.pet_scale or DEFAULT_PET_SCALE
    volumes, skipped, references = [], [], set()
    for subject in subjects:
        files = find_training_files(deriv, subject)
        if files is None or (files["pet"] is None and not opts.unpaired):
            skipped.append(subject)
            continue
        try:
            sources = InputSources(**find_inputs(deriv, subject))
            volumes.append(
                load_participant(subject, sources, opts.input_representation, pet_scale)
            )
        except (ValueError, OSError) as exc:
            raise PetSynthError(str(exc), str(files["t1w"])) from None
        if files["pet"] is not None:
            references.add(_reference_region(files["pet"]))
    if len(references) > 1:
        raise PetSynthError(
            f"training PETs were normalized with different reference regions {sorted(references)}",
            str(deriv),
        )
    if skipped:
        LOGGER.warning("no usable MNI-space T1w/PET derivatives for: %s", ", ".join(skipped))
    with_pet = [v for v in volumes if v.pet is not None]
    if len(with_pet) < 2:
        raise PetSynthError(
            f"need at least 2 participants with T1w and PET derivatives, found {len(with_pet)}",
            str(deriv),
        )

    overrides = {
        k: getattr(opts, k)
        for k in (
            "n_epochs",
            "n_epochs_decay",
            "batch_size",
            "lr",
            "ngf",
            "ndf",
            "n_blocks",
            "lambda_mse",
            "lambda_cycle",
            "lambda_l1",
            "lambda_lap",
            "sample_steps",
            "pretrain_steps",
            "prediction_type",
        )
    }
    spec = get_spec(opts.model)
    overrides = {k: v for k, v in overrides.items() if k in spec.defaults}
    config = model_config(opts.model, **overrides)
    names = [v.name for v in with_pet]
    dataset = dataset_name(opts.bids_dir)
    description = opts.data_description or (
        f"{len(with_pet)} participants (group {'/'.join(opts.group)}) of {dataset}"
    )
    extra = {
        "training": {"data": description, "dataset": dataset},
        "input": {"pet_reference_region": references.pop() if references else "gm-mean"},
    }
    if opts.card_note:
        extra["intended_use"] = opts.card_note

    if opts.folds:
        fold_sets = split_folds(names, opts.folds, opts.random_seed)
        todo = [opts.fold] if opts.fold else range(1, opts.folds + 1)
        rows = []
        for k in todo:
            val_names = set(fold_sets[k - 1])
            result = _train_one(
                opts,
                config,
                volumes,
                val_names,
                opts.model_dir / f"fold-{k}",
                pet_scale,
                device,
                extra,
            )
            rows.append({"fold": k, "best_epoch": result.best_epoch, **result.best_metrics})
        _write_cv(opts.model_dir / "cv_metrics.tsv", rows)
        return 0
    if opts.val_participants:
        val_names = {n.removeprefix("sub-") for n in opts.val_participants}
    else:
        n_val = max(1, round(opts.val_fraction * len(names)))
        val_names = set(sorted(names, key=lambda n: hash_order(n, opts.random_seed))[:n_val])
    _train_one(opts, config, volumes, val_names, opts.model_dir, pet_scale, device, extra)
    return 0


def hash_order(name: str, seed: int) -> str:
    """A seed-dependent but platform-stable sort key (for validation selection)."""
    import hashlib

    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def _train_one(opts, config, volumes, val_names, out_dir, pet_scale, device, extra):
    from .synthesis.training import train

    train_v = [v for v in volumes if v.name not in val_names]
    val_v = [v for v in volumes if v.name in val_names]
    if not train_v or not val_v:
        raise PetSynthError("the split left no training or no validation participant")
    LOGGER.info(
        "training %s on %d participant(s), validating on %s",
        opts.model,
        len(train_v),
        ", ".join(sorted(val_names)),
    )
    bar = _progress_bar()
    result = train(
        opts.model,
        config,
        train_v,
        val_v,
        out_dir,
        epochs=opts.epochs,
        paired=not opts.unpaired,
        patience=opts.patience,
        seed=opts.random_seed,
        device=device,
        pet_scale=pet_scale,
        max_patches=opts.max_patches,
        max_steps_per_epoch=opts.max_steps_per_epoch,
        resume=not opts.no_resume,
        card_extra=extra,
        progress=bar,
        prior=opts.prior,
        prior_anatomy=opts.prior_anatomy,
    )
    if bar is not None:
        bar.close()
    m = result.best_metrics
    print(
        f"petsynth-train: {result.weights} (best epoch {result.best_epoch}: "
        f"SSIM {m.get('ssim', float('nan')):.4f}, PSNR {m.get('psnr', float('nan')):.2f} dB, "
        f"RMSE {m.get('rmse', float('nan')):.4f}, MAE {m.get('mae', float('nan')):.4f})"
    )
    return result


class _Bar:
    """tqdm progress over the steps of each epoch (only on a terminal)."""

    def __init__(self) -> None:
        self.bar = None
        self.epoch = -1

    def __call__(self, epoch: int, step: int, steps: int, losses: dict) -> None:
        from tqdm import tqdm

        if epoch != self.epoch:
            self.close()
            self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}", leave=False, file=sys.stderr)
            self.epoch = epoch
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in ("G", "D_B", "D")})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress_bar():
    return _Bar() if sys.stderr.isatty() else None


def _reference_region(pet: Path) -> str:
    """The SUVR reference region recorded in a PetSynth PET sidecar (gm-mean if absent)."""
    from .layout import sidecar

    side = sidecar(pet)
    try:
        return json.loads(side.read_text()).get("ReferenceRegion", "gm-mean")
    except (OSError, ValueError):
        return "gm-mean"


def _write_cv(path: Path, rows: list[dict]) -> None:
    keys = list(rows[0])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, keys, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    LOGGER.info("cross-validation metrics: %s", path)
