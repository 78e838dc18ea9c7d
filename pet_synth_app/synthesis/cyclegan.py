"""CycleGAN (Zhu et al. 2017) with the paired MSE term of Zotova et al. 2021 (eq. 2-3).

Domain A is the T1w MRI, domain B the FDG PET: G_B: A -> B is the synthesis generator,
G_A: B -> A the reverse one; D_A and D_B are PatchGANs. Generator loss::

    L = L_GAN(G_B, D_B) + L_GAN(G_A, D_A)
        + lambda_cycle * (|G_A(G_B(a)) - a|_1 + |G_B(G_A(b)) - b|_1)
        + lambda_mse * (|G_B(a) - b|^2 + |G_A(b) - a|^2)      (paired batches only)

With ``prior_shape`` (semi-3D only) each generator also sees the slices of its output
domain's prior (the mean training image at the same slice position) and predicts a
residual to it (``ResnetGenerator``); with ``prior_input`` it sees the mean image of its
input domain too (a multi-channel input representation: one mean per channel, its
slices channel-major like the images'); ``train_step`` then takes the prior slices of the
batch as ``priors = ((T1w prior, PET prior) at the T1w samples' slices, (T1w prior, PET
prior) at the PET samples' slices)`` (the same pair twice for paired batches).
"""

from __future__ import annotations

import torch

from .losses import cycle_loss, discriminator_loss, gan_loss, paired_mse_loss
from .model import ImagePool, SynthesisModel, kind_from_config, set_requires_grad
from .networks import PatchGAN, ResnetGenerator, input_channels


class CycleGAN(SynthesisModel):
    """Two ResNet generators and two PatchGANs; ``lambda_mse = 0`` gives plain CycleGAN."""

    multichannel_prior = True

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        c = self.config
        dims, ch = int(c["spatial_dims"]), int(c["channels"])
        n_rep = input_channels(c)
        ch_a = ch * n_rep  # the T1w domain: every representation channel
        self.kind = kind_from_config(c)
        prior_shape = c.get("prior_shape")
        if prior_shape is not None and dims != 2:
            raise ValueError("a prior is only supported by the semi-3D (slice) models")
        gen = dict(
            spatial_dims=dims,
            ngf=int(c["ngf"]),
            n_blocks=int(c["n_blocks"]),
            prior_shape=prior_shape,
            input_prior=prior_shape is not None and bool(c.get("prior_input")),
        )
        # T1w -> PET and PET -> T1w; a multi-channel T1w domain has one prior per channel
        self.G_B = ResnetGenerator(
            in_channels=ch_a, out_channels=ch, domain_channels=(n_rep, 1), **gen
        )
        self.G_A = ResnetGenerator(
            in_channels=ch, out_channels=ch_a, domain_channels=(1, n_rep), **gen
        )
        self.D_A = PatchGAN(dims, ch_a, int(c["ndf"]))
        self.D_B = PatchGAN(dims, ch, int(c["ndf"]))
        self._rng = torch.Generator().manual_seed(int(c.get("seed", 0)))
        self.pool_A = ImagePool(int(c["pool_size"]), self._rng)
        self.pool_B = ImagePool(int(c["pool_size"]), self._rng)

    @property
    def generator(self) -> ResnetGenerator:
        return self.G_B

    def parameter_groups(self) -> dict:
        return {
            "G": list(self.G_A.parameters()) + list(self.G_B.parameters()),
            "D": list(self.D_A.parameters()) + list(self.D_B.parameters()),
        }

    @property
    def uses_prior(self) -> bool:
        return self.G_B.residual

    def set_priors(self, t1_prior: torch.Tensor, pet_prior: torch.Tensor) -> None:
        with torch.no_grad():
            self.G_A.prior.copy_(t1_prior)
            self.G_B.prior.copy_(pet_prior)
            if self.G_B.input_prior_channels:
                self.G_A.input_prior.copy_(pet_prior)
                self.G_B.input_prior.copy_(t1_prior)

    def prior_volumes(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.G_A.prior, self.G_B.prior

    def forward(self, t1: torch.Tensor) -> torch.Tensor:
        if self.uses_prior:
            raise ValueError(
                "a model with a prior needs its prior slices: use "
                "synthesis.inference.predict_volume"
            )
        return self.G_B(t1)

    def generator_losses(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        paired: bool,
        priors: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Generator loss terms and the fakes (fake_b = G_B(a), fake_a = G_A(b))."""
        lam_cyc = float(self.config["lambda_cycle"])
        lam_mse = float(self.config["lambda_mse"])
        if self.uses_prior:
            if priors is None:
                raise ValueError("this model needs the prior slices of the batch")
            (pa_at_a, pb_at_a), (pa_at_b, pb_at_b) = priors

            two = self.G_B.input_prior_channels

            def with_prior(net, input_prior, prior):
                extra = [input_prior, prior] if two else [prior]
                return lambda x: net(torch.cat([x, *extra], 1))

            # a's chain (G_B(a), G_A(G_B(a))) at a's slices, b's chain at b's slices
            g_b = with_prior(self.G_B, pa_at_a, pb_at_a)
            g_a_cycle = with_prior(self.G_A, pb_at_a, pa_at_a)
            g_a = with_prior(self.G_A, pb_at_b, pa_at_b)
            g_b_cycle = with_prior(self.G_B, pa_at_b, pb_at_b)
        else:
            g_a = g_a_cycle = self.G_A
            g_b = g_b_cycle = self.G_B
        fake_b = g_b(a)
        fake_a = g_a(b)
        terms = {
            "G_B_gan": gan_loss(self.D_B(fake_b), True),
            "G_A_gan": gan_loss(self.D_A(fake_a), True),
            "cycle_A": lam_cyc * cycle_loss(g_a_cycle(fake_b), a),
            "cycle_B": lam_cyc * cycle_loss(g_b_cycle(fake_a), b),
        }
        if paired and lam_mse > 0:
            terms["mse_B"] = lam_mse * paired_mse_loss(fake_b, b)
            terms["mse_A"] = lam_mse * paired_mse_loss(fake_a, a)
        return terms, fake_a, fake_b

    def train_step(self, t1, pet, optimizers, paired=True, priors=None):
        a, b = t1, pet
        set_requires_grad([self.D_A, self.D_B], False)
        optimizers["G"].zero_grad(set_to_none=True)
        terms, fake_a, fake_b = self.generator_losses(a, b, paired, priors)
        loss_g = sum(terms.values())
        loss_g.backward()
        optimizers["G"].step()

        set_requires_grad([self.D_A, self.D_B], True)
        optimizers["D"].zero_grad(set_to_none=True)
        fb = self.pool_B.query(fake_b)
        fa = self.pool_A.query(fake_a)
        loss_db = discriminator_loss(self.D_B(b), self.D_B(fb.detach()))
        loss_da = discriminator_loss(self.D_A(a), self.D_A(fa.detach()))
        (loss_da + loss_db).backward()
        optimizers["D"].step()

        out = {k: float(v.detach()) for k, v in terms.items()}
        out.update(
            G=float(loss_g.detach()), D_A=float(loss_da.detach()), D_B=float(loss_db.detach())
        )
        return out


__all__ = ["CycleGAN"]
