"""MRI2PET: conditional 3D denoising diffusion (DDPM) with a Laplacian-pyramid loss.

The network sees the noisy PET patch and the input-representation channels
(``synthesis.inputs``) concatenated, and predicts the noise. Loss (MRI2PET eq. 4)::

    L = MSE(eps, eps_pred) + lambda_lap * L_lap(P, P_pred)

with ``P_pred`` the clean image implied by the noise prediction (clipped to [-1, 1], as
at sampling: without the clip the 1 / sqrt(alpha_bar_t) factor, ~200 at t = 999, makes the
term explode at large t) and ``L_lap`` the 5-level Laplacian-pyramid MSE
(``diffusion.laplacian_loss``). Training noise steps: MRI2PET's 1000-step linear schedule
(beta 0.0015 -> 0.02). Sampling: DDIM (eta = 0) with ``sample_steps`` steps from seeded
Gaussian noise (``diffusion.SeededSampler``), so one seed gives one sample.

``prediction_type`` ``"sample"`` (PetSynth's option, not in MRI2PET): the network
predicts the clean image instead of the noise (MSE to it replaces the noise MSE; DDIM
sampling takes it as is); it learns far faster on a short CPU budget (docs/benchmarks.md).

Pretraining (MRI2PET's style-transferred pre-training): for the first ``pretrain_steps``
optimisation steps the target is not the PET but a PET-like image made from the T1w of the
batch by tissue class (:func:`pet_like_t1w`). MRI2PET transfers the style with a pretrained
VGG19; no pretrained network can be downloaded here, so the mapping is by tissue class.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .diffusion import (
    SeededSampler,
    TimeUNet3D,
    laplacian_loss,
    make_ddim_scheduler,
    make_ddpm_scheduler,
    predicted_x0,
)
from .model import SynthesisModel, kind_from_config
from .networks import input_channels

# FDG uptake relative to GM by tissue class (GM : WM : CSF about 1 : 0.4 : 0.1), the
# intensities of the PET-like pretraining targets
PET_LIKE_UPTAKE = {"csf": 0.1, "gm": 1.0, "wm": 0.4}


def pet_like_t1w(t1: torch.Tensor, smooth_sigma_vox: float = 1.0) -> torch.Tensor:
    """A PET-like image from a [-1, 1] T1w batch (b, 1, x, y, z), in [-1, 1].

    In-brain voxels (T1w > -1) are split into CSF / GM / WM by the 25th and 60th
    percentiles of the batch's in-brain T1w intensities, set to ``PET_LIKE_UPTAKE`` (times
    0.8 so GM sits where a PET's GM does in [0, 1]), and blurred with a Gaussian of
    ``smooth_sigma_vox`` voxels; outside the brain -1."""
    x = t1[:, :1]
    inside = x > -0.999
    if not inside.any():
        return torch.full_like(x, -1.0)
    vals = x[inside]
    if vals.numel() > 200_000:
        vals = vals[:: vals.numel() // 200_000 + 1]
    q_csf, q_wm = torch.quantile(vals.float(), torch.tensor([0.25, 0.60], device=x.device))
    level = torch.where(
        x < q_csf,
        torch.full_like(x, PET_LIKE_UPTAKE["csf"]),
        torch.where(
            x < q_wm,
            torch.full_like(x, PET_LIKE_UPTAKE["gm"]),
            torch.full_like(x, PET_LIKE_UPTAKE["wm"]),
        ),
    )
    img01 = torch.where(inside, 0.8 * level, torch.zeros_like(x))
    if smooth_sigma_vox > 0:
        r = max(1, int(round(2 * smooth_sigma_vox)))
        g = torch.exp(
            -0.5
            * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / smooth_sigma_vox) ** 2
        )
        g = g / g.sum()
        for dim in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + dim] = len(g)
            pad = [0] * 6
            pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = r
            img01 = F.conv3d(F.pad(img01, pad, mode="replicate"), g.view(shape))
    return img01 * 2 - 1


class DDPMSampler(SeededSampler):
    """The generator of ``ddpm3d``: ``forward(condition)`` runs DDIM sampling.

    ``condition`` (b, c, x, y, z) in [-1, 1] -> PET (b, 1, x, y, z) in [-1, 1]. With
    ``prior_shape`` (``--prior``) the condition ends with the prior channels (mean
    training T1w, then PET, at the patch position) and DDIM samples the residual
    PET - prior (clipped to [-1, 1] like any DDIM sample), which is added to the prior.
    The last layer starts at 0: with ``prediction_type="sample"`` an untrained model's
    sample is the prior exactly (the last DDIM step returns the predicted clean residual,
    0); with ``"epsilon"`` it is the prior plus the clipped implied x0 of pure noise."""

    def __init__(
        self,
        n_cond: int,
        channels: list[int],
        sample_steps: int,
        prediction_type: str = "epsilon",
        prior_shape: tuple[int, ...] | list[int] | None = None,
        input_prior: bool = False,
    ) -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type must be epsilon or sample, got {prediction_type!r}")
        self.n_out = 1
        n_cond += self._register_prior(prior_shape, input_prior, n_cond)
        self.unet = TimeUNet3D(1 + n_cond, 1, channels)
        if self.residual:
            self._zero_last_layer()
        self.sample_steps = int(sample_steps)
        self.prediction_type = prediction_type
        self.size_multiple = self.unet.size_multiple

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        scheduler = make_ddim_scheduler(prediction_type=self.prediction_type)
        scheduler.set_timesteps(self.sample_steps)
        b = condition.shape[0]
        x = self.randn((b, 1, *condition.shape[2:]), condition.device)
        for t in scheduler.timesteps:
            steps = torch.full((b,), int(t), dtype=torch.long, device=condition.device)
            eps = self.unet(torch.cat([x, condition], 1), steps)
            x, _ = scheduler.step(eps, int(t), x)
        return self.add_prior(x, condition)


class DDPM3D(SynthesisModel):
    """MRI2PET's conditional 3D DDPM on patches (see the module doc)."""

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        c = self.config
        if int(c["spatial_dims"]) != 3:
            raise ValueError("ddpm3d is a 3D model (spatial_dims 3)")
        if c.get("prior_shape") is not None and input_channels(c) != 1:
            raise ValueError("a prior is only supported with single-channel input")
        self.kind = kind_from_config(c)
        self.G = DDPMSampler(
            input_channels(c),
            list(c["unet_channels"]),
            int(c["sample_steps"]),
            str(c.get("prediction_type") or "epsilon"),
            c.get("prior_shape"),
            c.get("prior_shape") is not None and bool(c.get("prior_input")),
        )
        self.scheduler = make_ddpm_scheduler()
        self.steps_done = 0

    @property
    def generator(self) -> DDPMSampler:
        return self.G

    def parameter_groups(self) -> dict:
        return {"G": list(self.G.parameters())}

    @property
    def uses_prior(self) -> bool:
        return self.G.residual

    def set_priors(self, t1_prior: torch.Tensor, pet_prior: torch.Tensor) -> None:
        with torch.no_grad():
            self.G.prior.copy_(pet_prior)
            if self.G.input_prior_channels:
                self.G.input_prior.copy_(t1_prior)

    def prior_volumes(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        return getattr(self.G, "input_prior", None), self.G.prior

    def condition(self, t1: torch.Tensor, priors=None) -> torch.Tensor:
        """The sampler's condition of a batch: the input channels, then (residual model)
        the prior patches ``priors[0]`` = (T1w prior, PET prior) at the batch's
        positions (as ``train_step`` gets them)."""
        if not self.uses_prior:
            return t1
        if priors is None:
            raise ValueError("this model needs the prior patches of the batch")
        pa, pb = priors[0]
        return torch.cat([t1, pa, pb] if self.G.input_prior_channels else [t1, pb], 1)

    def losses(self, t1: torch.Tensor, pet: torch.Tensor, priors=None) -> dict[str, torch.Tensor]:
        """Noise MSE and lambda_lap * Laplacian-pyramid loss of one batch (t, noise from
        the torch global RNG, which the trainer seeds). A residual model diffuses
        ``pet`` minus the PET prior patch (``priors``: see :meth:`condition`)."""
        cond = self.condition(t1, priors)
        if self.uses_prior:
            pet = pet - cond[:, -1:]
        b = pet.shape[0]
        t = torch.randint(0, self.scheduler.num_train_timesteps, (b,), device=pet.device)
        noise = torch.randn_like(pet)
        x_t = self.scheduler.add_noise(pet, noise, t)
        out = self.G.unet(torch.cat([x_t, cond], 1), t)
        if self.G.prediction_type == "sample":  # the network predicts the clean image
            terms = {"x0_mse": F.mse_loss(out, pet)}
            x0 = out.clamp(-1, 1)
        else:
            terms = {"noise_mse": F.mse_loss(out, noise)}
            x0 = predicted_x0(x_t, out, t, self.scheduler.alphas_cumprod).clamp(-1, 1)
        lam = float(self.config["lambda_lap"])
        if lam > 0:
            terms["laplacian"] = lam * laplacian_loss(x0, pet, int(self.config["lap_levels"]))
        return terms

    def train_step(self, t1, pet, optimizers, paired=True, priors=None):
        pretraining = self.steps_done < int(self.config.get("pretrain_steps") or 0)
        target = pet_like_t1w(t1) if pretraining else pet
        terms = self.losses(t1, target, priors)
        loss = sum(terms.values())
        optimizers["G"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["G"].step()
        self.steps_done += 1
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["G"] = float(loss.detach())
        return out

    def forward(self, t1: torch.Tensor) -> torch.Tensor:
        return self.G(t1)


def set_sample_steps(generator: nn.Module, steps: int | None) -> None:
    """Override the number of reverse steps of a diffusion generator (None: keep)."""
    if steps is not None and hasattr(generator, "sample_steps"):
        generator.sample_steps = int(steps)


__all__ = ["DDPM3D", "DDPMSampler", "PET_LIKE_UPTAKE", "pet_like_t1w", "set_sample_steps"]
