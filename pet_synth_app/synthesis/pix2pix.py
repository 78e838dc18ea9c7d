"""Pix2Pix (Isola et al. 2017): conditional GAN with a U-Net generator, a PatchGAN that
sees (T1w, PET) pairs, and an L1 term (lambda 100) to the paired real PET."""

from __future__ import annotations

import torch

from .losses import discriminator_loss, gan_loss, paired_l1_loss
from .model import SynthesisModel, kind_from_config, set_requires_grad
from .networks import PatchGAN, UnetGenerator, input_channels


class Pix2Pix(SynthesisModel):
    """Paired-only T1w -> PET translation. Loss: GAN (vanilla) + lambda_l1 * L1."""

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        c = self.config
        dims, ch = int(c["spatial_dims"]), int(c["channels"])
        self.kind = kind_from_config(c)
        ch_a = ch * input_channels(c)  # every channel of the input representation
        self.G = UnetGenerator(dims, ch_a, ch, int(c["ngf"]), int(c["n_down"]))
        self.D = PatchGAN(dims, ch_a + ch, int(c["ndf"]))

    @property
    def generator(self) -> UnetGenerator:
        return self.G

    def parameter_groups(self) -> dict:
        return {"G": list(self.G.parameters()), "D": list(self.D.parameters())}

    def generator_losses(
        self, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Generator terms and the fake PET G(a)."""
        mode = self.config["gan_mode"]
        fake_b = self.G(a)
        terms = {
            "G_gan": gan_loss(self.D(torch.cat([a, fake_b], 1)), True, mode),
            "l1": float(self.config["lambda_l1"]) * paired_l1_loss(fake_b, b),
        }
        return terms, fake_b

    def train_step(self, t1, pet, optimizers, paired=True, priors=None):
        if not paired:
            raise ValueError("pix2pix needs paired T1w/PET (same subject, coregistered)")
        mode = self.config["gan_mode"]
        set_requires_grad([self.D], False)
        optimizers["G"].zero_grad(set_to_none=True)
        terms, fake_b = self.generator_losses(t1, pet)
        loss_g = sum(terms.values())
        loss_g.backward()
        optimizers["G"].step()

        set_requires_grad([self.D], True)
        optimizers["D"].zero_grad(set_to_none=True)
        loss_d = discriminator_loss(
            self.D(torch.cat([t1, pet], 1)), self.D(torch.cat([t1, fake_b.detach()], 1)), mode
        )
        loss_d.backward()
        optimizers["D"].step()
        out = {k: float(v.detach()) for k, v in terms.items()}
        out.update(G=float(loss_g.detach()), D=float(loss_d.detach()))
        return out


__all__ = ["Pix2Pix"]
