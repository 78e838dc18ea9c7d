"""SynDiff (Özbey et al. 2023; used for pseudo-normal FDG PET by Chen et al.): adversarial
diffusion with a few large reverse steps, plus a cycle-consistent non-diffusive module for
unpaired training.

Diffusive module, per domain: a generator ``G(x_t, y, t)`` predicts the clean target
``x0`` from the noisy target ``x_t`` and the guiding source image ``y``; a sample of
``x_{t-1}`` is drawn from the Gaussian posterior ``q(x_{t-1} | x_t, x0_pred)``; a
discriminator ``D(x_{t-1}, x_t, t)`` (conditioned on the step and the noisier image)
tells real from generated pairs. ``n_steps`` (SynDiff: 4) reverse steps of a VP schedule
(beta_min 0.1, beta_max 20, as SynDiff) replace the usual 1000.

Non-diffusive module (unpaired training only): ResNet generators PET -> T1w and T1w -> PET
with PatchGAN discriminators (as CycleGAN) give each real image an estimated source; the
diffusive generator of each domain is trained to recover the real image from its noisy
version guided by that estimate (L1, ``lambda_cycle``), so no real pair is needed.

Paired training (``paired=True``) guides the T1w -> PET diffusive generator by the real
T1w and adds an L1 to the PET (``lambda_l1``); the non-diffusive module and the PET -> T1w
direction are not trained then. At inference only the T1w -> PET diffusive generator runs
(``SynDiffSampler``), guided by the real T1w. Losses: non-saturating GAN (softplus) for
the diffusive pairs as SynDiff, LSGAN for the non-diffusive module as CycleGAN. SynDiff's
latent code input (a StyleGAN-like mapping) is left out: the randomness comes from the
initial noise and the posterior samples.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .diffusion import SeededSampler, TimeUNet3D
from .losses import discriminator_loss, gan_loss
from .model import SynthesisModel, kind_from_config, set_requires_grad
from .networks import PatchGAN, ResnetGenerator, input_channels

BETA_MIN, BETA_MAX = 0.1, 20.0


def vp_betas(n_steps: int, beta_min: float = BETA_MIN, beta_max: float = BETA_MAX) -> torch.Tensor:
    """SynDiff's discretised VP-SDE betas for ``n_steps`` large steps (index 1..n_steps;
    index 0 is a placeholder 0)."""
    t = torch.arange(1, n_steps + 1, dtype=torch.float64) / n_steps
    dt = 1.0 / n_steps
    betas = 1 - torch.exp(-beta_min * dt - 0.5 * (beta_max - beta_min) * (2 * t - dt) * dt)
    return torch.cat([torch.zeros(1, dtype=torch.float64), betas]).float()


class VPSchedule(nn.Module):
    """Forward noising and Gaussian posterior of the ``n_steps``-step VP chain."""

    def __init__(self, n_steps: int) -> None:
        super().__init__()
        self.n_steps = int(n_steps)
        betas = vp_betas(self.n_steps)
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)  # abar[0] = 1
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas", alphas, persistent=False)
        self.register_buffer("abar", abar, persistent=False)

    @staticmethod
    def _at(v: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return v.to(x.device)[t].view(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x0)."""
        a = self._at(self.abar, t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_{t-1})."""
        b = self._at(self.betas, t, x_prev)
        return (1 - b).sqrt() * x_prev + b.sqrt() * noise

    def posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """x_{t-1} ~ q(x_{t-1} | x_t, x0) (no noise at t = 1)."""
        ab_t, ab_prev = self._at(self.abar, t, x_t), self._at(self.abar, t - 1, x_t)
        beta, alpha = self._at(self.betas, t, x_t), self._at(self.alphas, t, x_t)
        mean = (ab_prev.sqrt() * beta / (1 - ab_t)) * x0 + (
            alpha.sqrt() * (1 - ab_prev) / (1 - ab_t)
        ) * x_t
        var = beta * (1 - ab_prev) / (1 - ab_t)
        nonzero = (t > 1).float().view(-1, *([1] * (x_t.ndim - 1)))
        return mean + nonzero * var.clamp_min(1e-20).sqrt() * noise


class SynDiffSampler(SeededSampler):
    """The T1w -> PET diffusive generator of SynDiff: ``forward(condition)`` runs the
    ``n_steps`` large reverse steps from seeded noise. ``unet(x_t ++ y, t)`` predicts x0.

    With ``prior_shape`` (``--prior``) ``y`` ends with the prior channels (the input
    domain's mean, then the output domain's mean, at the patch position), the chain runs
    on the residual to the output prior and the sample is prior + residual, clamped to
    [-1, 1]. The last layer starts at 0, so an untrained model's sample is the prior
    exactly (x0 = tanh(0) = 0, and the last posterior step, at abar_0 = 1, returns x0)."""

    def __init__(
        self,
        n_cond: int,
        n_out: int,
        channels: list[int],
        n_steps: int,
        prior_shape: tuple[int, ...] | list[int] | None = None,
        input_prior: bool = False,
    ) -> None:
        super().__init__()
        self.n_out = n_out
        n_cond += self._register_prior(prior_shape, input_prior, n_cond)
        self.unet = TimeUNet3D(n_out + n_cond, n_out, channels)
        if self.residual:
            self._zero_last_layer()
        self.schedule = VPSchedule(n_steps)
        self.size_multiple = self.unet.size_multiple

    @property
    def sample_steps(self) -> int:
        return self.schedule.n_steps

    @sample_steps.setter
    def sample_steps(self, n_steps: int) -> None:
        # the network learnt the noise levels of its training chain: other step numbers
        # are for timing only (docs/models.md)
        self.schedule = VPSchedule(int(n_steps)).to(next(self.unet.parameters()).device)

    def predict_x0(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # the network's step input: the large-step index on the 1000-step scale
        return torch.tanh(self.unet(torch.cat([x_t, y], 1), t * (1000 // self.schedule.n_steps)))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        b = condition.shape[0]
        shape = (b, self.n_out, *condition.shape[2:])
        x = self.randn(shape, condition.device)
        for step in range(self.schedule.n_steps, 0, -1):
            t = torch.full((b,), step, dtype=torch.long, device=condition.device)
            x0 = self.predict_x0(x, condition, t)
            x = self.schedule.posterior(x0, x, t, self.randn(shape, condition.device))
        return self.add_prior(x, condition)


class StepDiscriminator(nn.Module):
    """SynDiff's diffusive discriminator: a PatchGAN on (x_{t-1}, x_t, t / n_steps)."""

    def __init__(self, channels: int, ndf: int, n_steps: int) -> None:
        super().__init__()
        self.n_steps = n_steps
        self.net = PatchGAN(3, 2 * channels + 1, ndf)

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tmap = (t.float() / self.n_steps).view(-1, 1, 1, 1, 1).expand_as(x_t[:, :1])
        return self.net(torch.cat([x_prev, x_t, tmap], 1))


class SynDiff(SynthesisModel):
    """SynDiff on 3D patches (see the module doc). Networks: ``G_B`` (T1w -> PET
    diffusive, the inference generator), ``G_A`` (PET -> T1w diffusive), ``N_B`` / ``N_A``
    (non-diffusive T1w -> PET / PET -> T1w), ``Dd_B`` / ``Dd_A`` (step discriminators),
    ``Dn_B`` / ``Dn_A`` (PatchGANs of the non-diffusive module)."""

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        c = self.config
        if int(c["spatial_dims"]) != 3:
            raise ValueError("syndiff is a 3D model (spatial_dims 3)")
        self.kind = kind_from_config(c)
        n_a, n_steps = input_channels(c), int(c["n_steps"])
        chans, ngf, ndf = list(c["unet_channels"]), int(c["ngf"]), int(c["ndf"])
        prior_shape = c.get("prior_shape")
        if prior_shape is not None and n_a != 1:
            raise ValueError("a prior is only supported with single-channel input")
        priors = dict(
            prior_shape=prior_shape,
            input_prior=prior_shape is not None and bool(c.get("prior_input")),
        )
        self.G_B = SynDiffSampler(n_a, 1, chans, n_steps, **priors)
        self.G_A = SynDiffSampler(1, n_a, chans, n_steps, **priors)
        gen = dict(spatial_dims=3, ngf=ngf, n_blocks=int(c["n_blocks"]), **priors)
        self.N_B = ResnetGenerator(in_channels=n_a, out_channels=1, **gen)
        self.N_A = ResnetGenerator(in_channels=1, out_channels=n_a, **gen)
        self.Dd_B = StepDiscriminator(1, ndf, n_steps)
        self.Dd_A = StepDiscriminator(n_a, ndf, n_steps)
        self.Dn_B = PatchGAN(3, 1, ndf)
        self.Dn_A = PatchGAN(3, n_a, ndf)

    @property
    def generator(self) -> SynDiffSampler:
        return self.G_B

    @property
    def uses_prior(self) -> bool:
        return self.G_B.residual

    def set_priors(self, t1_prior: torch.Tensor, pet_prior: torch.Tensor) -> None:
        with torch.no_grad():
            for g_b, g_a in ((self.G_B, self.G_A), (self.N_B, self.N_A)):
                g_b.prior.copy_(pet_prior)
                g_a.prior.copy_(t1_prior)
                if g_b.input_prior_channels:
                    g_b.input_prior.copy_(t1_prior)
                    g_a.input_prior.copy_(pet_prior)

    def prior_volumes(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.G_A.prior, self.G_B.prior

    def _with_prior(self, x: torch.Tensor, input_prior, prior) -> torch.Tensor:
        """``x`` followed by the prior patches its generator takes (input-domain mean if
        the model has it, then the output-domain mean); ``x`` without a prior."""
        if not self.uses_prior:
            return x
        extra = [input_prior, prior] if self.G_B.input_prior_channels else [prior]
        return torch.cat([x, *extra], 1)

    def parameter_groups(self) -> dict:
        gens = [self.G_B, self.G_A, self.N_B, self.N_A]
        discs = [self.Dd_B, self.Dd_A, self.Dn_B, self.Dn_A]
        return {
            "G": [p for n in gens for p in n.parameters()],
            "D": [p for n in discs for p in n.parameters()],
        }

    def _diffusion_pair(self, x0: torch.Tensor, g: SynDiffSampler):
        """Real (x_{t-1}, x_t, t) of a batch of clean images (torch global RNG)."""
        b = x0.shape[0]
        t = torch.randint(1, g.schedule.n_steps + 1, (b,), device=x0.device)
        x_prev = g.schedule.q_sample(x0, t - 1, torch.randn_like(x0))
        x_t = g.schedule.q_step(x_prev, t, torch.randn_like(x0))
        return x_prev, x_t, t

    def _diffusive(self, g: SynDiffSampler, d: StepDiscriminator, x0, y, lam_rec):
        """Generator terms of one diffusive direction and what its discriminator needs
        (a residual generator's chain runs on ``x0`` minus the prior, the last channels
        of ``y``)."""
        if g.residual:
            x0 = x0 - y[:, -g.n_out :].detach()  # a constant (cat keeps y's graph)
        x_prev, x_t, t = self._diffusion_pair(x0, g)
        x0_pred = g.predict_x0(x_t, y, t)
        fake_prev = g.schedule.posterior(x0_pred, x_t, t, torch.randn_like(x0))
        terms = {
            "adv": F.softplus(-d(fake_prev, x_t, t)).mean(),
            "rec": lam_rec * F.l1_loss(x0_pred, x0),
        }
        return terms, (x_prev, fake_prev.detach(), x_t, t)

    @staticmethod
    def _d_loss(d: StepDiscriminator, real_prev, fake_prev, x_t, t) -> torch.Tensor:
        return F.softplus(-d(real_prev, x_t, t)).mean() + F.softplus(d(fake_prev, x_t, t)).mean()

    def train_step(self, t1, pet, optimizers, paired=True, priors=None):
        a, b = t1, pet
        lam_l1, lam_cyc = float(self.config["lambda_l1"]), float(self.config["lambda_cycle"])
        discs = [self.Dd_B, self.Dd_A, self.Dn_B, self.Dn_A]
        set_requires_grad(discs, False)
        optimizers["G"].zero_grad(set_to_none=True)
        out: dict[str, float] = {}
        if self.uses_prior and priors is None:
            raise ValueError("this model needs the prior patches of the batch")
        # (T1w prior, PET prior) at the T1w samples' and at the PET samples' positions
        (pa_a, pb_a), (pa_b, pb_b) = priors if priors is not None else ((None,) * 2,) * 2
        if paired:
            cond = self._with_prior(a, pa_a, pb_a)
            tb, pair_b = self._diffusive(self.G_B, self.Dd_B, b, cond, lam_l1)
            terms = {"G_B_adv": tb["adv"], "G_B_l1": tb["rec"]}
            pair_a = None
        else:  # estimated sources
            fake_a = self.N_A(self._with_prior(b, pb_b, pa_b))
            fake_b = self.N_B(self._with_prior(a, pa_a, pb_a))
            cond_b = self._with_prior(fake_a, pa_b, pb_b)
            cond_a = self._with_prior(fake_b, pb_a, pa_a)
            tb, pair_b = self._diffusive(self.G_B, self.Dd_B, b, cond_b, lam_cyc)
            ta, pair_a = self._diffusive(self.G_A, self.Dd_A, a, cond_a, lam_cyc)
            terms = {
                "G_B_adv": tb["adv"],
                "G_A_adv": ta["adv"],
                "cycle_B": tb["rec"],
                "cycle_A": ta["rec"],
                "N_B_gan": gan_loss(self.Dn_B(fake_b), True),
                "N_A_gan": gan_loss(self.Dn_A(fake_a), True),
            }
        loss_g = sum(terms.values())
        loss_g.backward()
        optimizers["G"].step()

        set_requires_grad(discs, True)
        optimizers["D"].zero_grad(set_to_none=True)
        loss_d = self._d_loss(self.Dd_B, *pair_b)
        if pair_a is not None:
            loss_d = loss_d + self._d_loss(self.Dd_A, *pair_a)
            loss_d = loss_d + discriminator_loss(self.Dn_B(b), self.Dn_B(fake_b.detach()))
            loss_d = loss_d + discriminator_loss(self.Dn_A(a), self.Dn_A(fake_a.detach()))
        loss_d.backward()
        optimizers["D"].step()
        out.update({k: float(v.detach()) for k, v in terms.items()})
        out.update(G=float(loss_g.detach()), D=float(loss_d.detach()))
        if not math.isfinite(out["G"]):
            raise FloatingPointError("syndiff: non-finite generator loss")
        return out

    def forward(self, t1: torch.Tensor) -> torch.Tensor:
        return self.G_B(t1)


__all__ = ["SynDiff", "SynDiffSampler", "StepDiscriminator", "VPSchedule", "vp_betas"]
