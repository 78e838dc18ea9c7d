"""Common interface of the trainable synthesis models (T1w -> FDG PET)."""

from __future__ import annotations

import torch
from torch import nn


def kind_from_config(config: dict) -> str:
    """How a model sees a volume: ``"slices"`` (semi-3D, 2D networks on adjacent axial
    slices) or ``"patches"`` (3D networks on cubes), from its ``spatial_dims``."""
    return "slices" if int(config["spatial_dims"]) == 2 else "patches"


class SynthesisModel(nn.Module):
    """A T1w -> PET translation model with its training losses.

    Images are (batch, channel, *spatial) tensors in [-1, 1]: 3 adjacent axial slices as
    channels (``kind == "slices"``) or 1-channel 3D patches (``kind == "patches"``).
    ``generator`` is the T1w -> PET network used at inference; the other networks only
    serve training. ``train_step`` runs one optimisation step of every network.
    """

    kind: str = "slices"
    multichannel_prior: bool = False
    """Whether ``--prior`` works with a multi-channel input representation."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = dict(config)

    @property
    def generator(self) -> nn.Module:
        raise NotImplementedError

    @property
    def uses_prior(self) -> bool:
        """Whether the generators take prior slices (``prior_shape`` in the config)."""
        return False

    def set_priors(self, t1_prior: torch.Tensor, pet_prior: torch.Tensor) -> None:
        """Residual models: copy the mean training T1w and PET ((x, y, z), [-1, 1], on
        the model grid) into every generator's prior buffers."""
        raise ValueError(f"{type(self).__name__} has no prior")

    def prior_volumes(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Residual models: the (T1w, PET) prior buffers ([-1, 1]; the T1w one None when
        the generators do not see it), as restored from a checkpoint."""
        raise ValueError(f"{type(self).__name__} has no prior")

    @property
    def size_multiple(self) -> int:
        """Spatial sizes fed to the generator must be multiples of this."""
        return int(getattr(self.generator, "size_multiple", 1))

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam optimizers (lr, beta1 from the config; beta2 0.999) per network group."""
        lr = float(self.config["lr"])
        betas = (float(self.config["beta1"]), 0.999)
        return {
            group: torch.optim.Adam(params, lr=lr, betas=betas)
            for group, params in self.parameter_groups().items()
        }

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        raise NotImplementedError

    def train_step(
        self,
        t1: torch.Tensor,
        pet: torch.Tensor,
        optimizers: dict[str, torch.optim.Optimizer],
        paired: bool = True,
        priors: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """One optimisation step on a batch; returns each loss term as a float.

        ``priors``: for models with a prior, its (T1w, PET) slices or patches at the T1w
        samples' positions and at the PET samples' positions."""
        raise NotImplementedError

    def forward(self, t1: torch.Tensor) -> torch.Tensor:
        return self.generator(t1)


class ImagePool:
    """History of generated images (Shrivastava et al.; CycleGAN pool of 50).

    With probability 0.5 a returned image is swapped for an older one, so the
    discriminator sees a history of generator outputs. Uses ``generator`` for draws
    (deterministic under a seed).
    """

    def __init__(self, size: int, generator: torch.Generator | None = None) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.rng = generator

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
                continue
            if float(torch.rand(1, generator=self.rng)) > 0.5:
                idx = int(torch.randint(0, self.size, (1,), generator=self.rng))
                old = self.images[idx].clone()
                self.images[idx] = image.clone()
                out.append(old)
            else:
                out.append(image)
        return torch.cat(out, 0)


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    """Freeze/unfreeze networks (discriminators during the generator step)."""
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


__all__ = ["ImagePool", "SynthesisModel", "set_requires_grad"]
