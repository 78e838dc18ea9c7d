"""Building blocks of the diffusion synthesis models (``ddpm3d``, ``syndiff``).

Tensors are (batch, channel, x, y, z) float32 with images in [-1, 1]. The noise schedules
and the DDIM sampler are MONAI's (``monai.networks.schedulers``). The denoising network is
a small time-conditioned 3D U-Net written here: MONAI's ``DiffusionModelUNet`` always puts
a self-attention block in its middle, which imports ``einops``, and ``einops`` is not in
the lock file (``requirements.lock``).
"""

from __future__ import annotations

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn
from torch.nn import functional as F

from .networks import register_priors

# MRI2PET: T = 1000 steps, beta linear from 0.0015 to 0.02
N_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.0015, 0.02


def make_ddpm_scheduler(n_steps: int = N_TRAIN_TIMESTEPS) -> DDPMScheduler:
    """The training (forward-noising) schedule of MRI2PET: linear betas 0.0015 -> 0.02."""
    return DDPMScheduler(n_steps, schedule="linear_beta", beta_start=BETA_START, beta_end=BETA_END)


def make_ddim_scheduler(
    n_steps: int = N_TRAIN_TIMESTEPS, prediction_type: str = "epsilon"
) -> DDIMScheduler:
    """The same schedule for deterministic (eta = 0) DDIM sampling, clipped to [-1, 1];
    ``prediction_type``: what the network predicts, ``"epsilon"`` (the noise) or
    ``"sample"`` (the clean image)."""
    return DDIMScheduler(
        n_steps,
        schedule="linear_beta",
        beta_start=BETA_START,
        beta_end=BETA_END,
        clip_sample=True,
        prediction_type=prediction_type,
    )


def predicted_x0(
    x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Clean image implied by a noise prediction: (x_t - sqrt(1 - a_t) eps) / sqrt(a_t),
    a_t the cumulative alpha product at step ``t`` (one per batch item)."""
    a = alphas_cumprod.to(x_t.device)[t].view(-1, *([1] * (x_t.ndim - 1)))
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


# ------------------------------------------------------------------ Laplacian pyramid
def laplacian_pyramid(x: torch.Tensor, levels: int = 5) -> list[torch.Tensor]:
    """MRI2PET's Laplacian pyramid (eq. 3): ``P_l - Upsample(Downsample(P_l))`` for
    ``l = 1..levels``, with ``P_1 = x``, ``P_{l+1} = Downsample(P_l)``; downsampling is a
    2-voxel average pooling, upsampling (tri)linear interpolation back to ``P_l``'s size.
    Works on 2D (b, c, x, y) and 3D (b, c, x, y, z) tensors; stops early when a level
    has a side < 2."""
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    out = []
    current = x
    for _ in range(levels):
        if min(current.shape[2:]) < 2:
            break
        down = pool(current, 2)
        up = F.interpolate(down, size=current.shape[2:], mode=mode, align_corners=False)
        out.append(current - up)
        current = down
    return out


def laplacian_loss(pred: torch.Tensor, target: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """MRI2PET eq. 2: sum over pyramid levels of the MSE between the levels."""
    return sum(
        F.mse_loss(p, q)
        for p, q in zip(
            laplacian_pyramid(pred, levels), laplacian_pyramid(target, levels), strict=True
        )
    )


# ------------------------------------------------------------------ networks
class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus the time embedding added after the first conv."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class TimeUNet3D(nn.Module):
    """A 3D U-Net conditioned on the diffusion step (sinusoidal embedding + MLP), one
    residual block per level, stride-2 convolutions down, nearest upsampling + conv up,
    no attention. ``forward(x, t)``: x (b, in_channels, ...), t (b,) integer steps.
    Spatial sizes must be multiples of ``size_multiple`` (2 ** (levels - 1))."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...] | list[int] = (16, 32, 64),
        groups: int = 8,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        self.t_dim = channels[0] * 4
        self.base = channels[0]
        self.size_multiple = 2 ** (len(channels) - 1)
        self.time_mlp = nn.Sequential(
            nn.Linear(channels[0], self.t_dim), nn.SiLU(), nn.Linear(self.t_dim, self.t_dim)
        )
        self.inc = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        prev = channels[0]
        for i, c in enumerate(channels):
            self.down_blocks.append(_ResBlock(prev, c, self.t_dim, groups))
            prev = c
            if i < len(channels) - 1:
                self.downsamplers.append(nn.Conv3d(c, c, 3, stride=2, padding=1))
        self.mid = _ResBlock(prev, prev, self.t_dim, groups)
        self.up_blocks = nn.ModuleList()
        self.upconvs = nn.ModuleList()
        for c in reversed(channels[:-1]):
            self.upconvs.append(nn.Conv3d(prev, c, 3, padding=1))
            self.up_blocks.append(_ResBlock(2 * c, c, self.t_dim, groups))
            prev = c
        self.out = nn.Sequential(
            nn.GroupNorm(min(groups, prev), prev),
            nn.SiLU(),
            nn.Conv3d(prev, out_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(get_timestep_embedding(t.to(x.device), self.base).to(x.dtype))
        h = self.inc(x)
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, temb)
            if i < len(self.downsamplers):
                skips.append(h)
                h = self.downsamplers[i](h)
        h = self.mid(h, temb)
        for conv, block in zip(self.upconvs, self.up_blocks, strict=True):
            skip = skips.pop()
            h = conv(F.interpolate(h, size=skip.shape[2:], mode="nearest"))
            h = block(torch.cat([h, skip], 1), temb)
        return self.out(h)


class SeededSampler(nn.Module):
    """Base of the diffusion generators: a reproducible noise source.

    ``sample_seed`` seeds a ``torch.Generator`` that is reset whenever the module is put
    in eval mode (``.eval()``, as inference and validation do), so the same seed and the
    same input give the same sample; each forward call draws the next noise from it.

    Residual option (``_register_prior``): the diffusion runs on the difference to the
    prior patch, which is added back to the sample (:meth:`add_prior`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sample_seed = 0
        self._rng: torch.Generator | None = None
        self.residual = False

    def reset_rng(self, seed: int | None = None) -> None:
        if seed is not None:
            self.sample_seed = int(seed)
        self._rng = torch.Generator().manual_seed(int(self.sample_seed))

    def train(self, mode: bool = True):  # noqa: D102 - nn.Module.train
        if not mode:
            self.reset_rng()
        return super().train(mode)

    def _register_prior(
        self, prior_shape: tuple[int, ...] | list[int] | None, input_prior: bool, n_in: int
    ) -> int:
        """Buffers of the residual option (``--prior``; as ``networks.ResnetGenerator``):
        ``prior`` (the mean training image of the output domain, [-1, 1], on the model
        grid) and, with ``input_prior``, ``input_prior`` (the mean of the input domain).
        The condition is then the image channels, the input prior's ``n_in`` channels
        and the prior's channels (last) at the same patch position. Returns the number
        of condition channels this adds."""
        self.residual = register_priors(self, prior_shape, input_prior)
        if not self.residual:
            return 0
        return (n_in if input_prior else 0) + self.n_out

    @property
    def input_prior_channels(self) -> bool:
        """Whether the condition includes the input-domain mean (``input_prior``)."""
        return hasattr(self, "input_prior")

    def _zero_last_layer(self) -> None:
        """Residual models: the network's last convolution starts at 0, so an untrained
        model predicts a zero residual (its sample is the prior, exactly)."""
        last = self.unet.out[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def add_prior(self, residual: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The sampled image: ``residual`` plus the prior patch (the last ``n_out``
        condition channels) for a residual model, clamped to [-1, 1]."""
        if self.residual:
            residual = condition[:, -self.n_out :] + residual
        return residual.clamp(-1, 1)

    def randn(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Standard normal noise of ``shape`` from the seeded generator (drawn on the CPU
        so that CPU and CUDA give the same numbers)."""
        if self._rng is None:
            self.reset_rng()
        return torch.randn(shape, generator=self._rng).to(device)


__all__ = [
    "BETA_END",
    "BETA_START",
    "N_TRAIN_TIMESTEPS",
    "SeededSampler",
    "TimeUNet3D",
    "laplacian_loss",
    "laplacian_pyramid",
    "make_ddim_scheduler",
    "make_ddpm_scheduler",
    "predicted_x0",
]
