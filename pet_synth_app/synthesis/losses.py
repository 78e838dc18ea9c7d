"""GAN loss terms of the synthesis models (Zotova et al. 2021, eq. 1-3; Isola et al.; Zhu
et al.)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def gan_loss(logits: torch.Tensor, target_is_real: bool, mode: str = "lsgan") -> torch.Tensor:
    """Adversarial loss of a discriminator output map against an all-real/all-fake target.

    ``lsgan``: mean squared error to 1 (real) or 0 (fake) (Mao et al.; CycleGAN);
    ``vanilla``: binary cross-entropy on logits (Pix2Pix).
    """
    target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"unknown GAN loss mode {mode!r}")


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, mode: str = "lsgan"
) -> torch.Tensor:
    """0.5 * (loss(D(real), real) + loss(D(fake), fake)), as in CycleGAN and Pix2Pix."""
    return 0.5 * (gan_loss(real_logits, True, mode) + gan_loss(fake_logits, False, mode))


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Cycle-consistency term: mean absolute error between x and G_A(G_B(x))."""
    return F.l1_loss(reconstructed, original)


def paired_mse_loss(fake: torch.Tensor, paired_real: torch.Tensor) -> torch.Tensor:
    """Seed 001 eq. 2: mean squared error between a fake image and its paired real image."""
    return F.mse_loss(fake, paired_real)


def paired_l1_loss(fake: torch.Tensor, paired_real: torch.Tensor) -> torch.Tensor:
    """Pix2Pix reconstruction term: mean absolute error to the paired real image."""
    return F.l1_loss(fake, paired_real)


__all__ = [
    "cycle_loss",
    "discriminator_loss",
    "gan_loss",
    "paired_l1_loss",
    "paired_mse_loss",
]
