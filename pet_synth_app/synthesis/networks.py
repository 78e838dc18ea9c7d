"""Generator and discriminator networks of the synthesis models (2D or 3D).

Tensors are (batch, channel, *spatial) float32 with image values in [-1, 1] (tanh range).
The PatchGAN discriminator and the U-Net come from MONAI; the ResNet generator of
Johnson et al. / Zhu et al. (CycleGAN) is not in MONAI and is written here.
"""

from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator, UNet
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_PAD = {2: nn.ReflectionPad2d, 3: nn.ReflectionPad3d}


def input_channels(config: dict) -> int:
    """Image channels of the input representation (``synthesis.inputs``; 1 when the
    config has none, as before issue 14). A semi-3D generator sees ``channels`` adjacent
    slices of each: ``channels * input_channels(config)`` input planes, channel-major."""
    return int(config.get("input_channels") or 1)


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


class ResnetBlock(nn.Module):
    """Residual block: reflection pad, 3-conv, instance norm, ReLU, twice, plus identity."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        conv, norm, pad = _CONV[spatial_dims], _NORM[spatial_dims], _PAD[spatial_dims]
        self.block = nn.Sequential(
            pad(1),
            conv(channels, channels, 3),
            norm(channels),
            nn.ReLU(True),
            pad(1),
            conv(channels, channels, 3),
            norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def register_priors(
    module: nn.Module,
    prior_shape: tuple[int, ...] | list[int] | None,
    input_prior: bool,
    prior_channels: int = 1,
    input_prior_channels: int = 1,
) -> bool:
    """Register the buffers of the residual option (``--prior``) on ``module``: ``prior``
    (the mean training image of the output domain) and, with ``input_prior``,
    ``input_prior`` (the mean of the input domain), [-1, 1] on the (x, y, z) model grid
    ``prior_shape``, -1 until training fills them. A domain of C > 1 image channels (a
    multi-channel input representation, ``synthesis.inputs``) gets a (C, x, y, z) buffer,
    one mean per channel. Returns whether there is a prior; ValueError for a shape that
    is not 3D or an input prior without a prior."""
    if prior_shape is None:
        if input_prior:
            raise ValueError("input_prior needs prior_shape")
        return False
    if len(prior_shape) != 3:
        raise ValueError("prior_shape must be an (x, y, z) grid shape")
    grid = tuple(int(n) for n in prior_shape)

    def shape(channels: int) -> tuple[int, ...]:
        return grid if channels == 1 else (int(channels), *grid)

    module.register_buffer("prior", -torch.ones(shape(prior_channels)))
    if input_prior:
        module.register_buffer("input_prior", -torch.ones(shape(input_prior_channels)))
    return True


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator: c7s1-ngf, 2 stride-2 downsamplings, ``n_blocks``
    residual blocks, 2 transposed-conv upsamplings, c7s1-out, tanh.

    With ``prior_shape`` (x, y, z) the generator carries a prior volume of its output
    domain on the model grid (buffer ``prior``, [-1, 1]; the mean training image, set by
    the trainer and saved with the weights). Its input is then the image channels
    followed by the prior's ``out_channels`` slices at the same position, and it predicts
    a residual: ``clamp(prior + tanh(net(x)), -1, 1)``; the last convolution starts at 0,
    so an untrained generator returns the prior. With ``input_prior`` it also carries the
    mean image of its *input* domain (buffer ``input_prior``), whose ``in_channels`` slices
    come between the image and the prior channels, so that the first convolution can take
    the input's deviation from its own mean. ``domain_channels`` = (input, output) image
    channels per slice position (a multi-channel input representation has C > 1): the
    priors then hold one mean per channel.

    Spatial sizes must be multiples of ``size_multiple`` (4).
    """

    size_multiple = 4

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        prior_shape: tuple[int, ...] | list[int] | None = None,
        input_prior: bool = False,
        domain_channels: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        conv, convt = _CONV[spatial_dims], _CONVT[spatial_dims]
        norm, pad = _NORM[spatial_dims], _PAD[spatial_dims]
        self.out_channels = out_channels
        n_in, n_out = domain_channels
        self.residual = register_priors(self, prior_shape, input_prior, n_out, n_in)
        if self.residual:
            if input_prior:
                in_channels *= 2
            in_channels += out_channels
        layers: list[nn.Module] = [pad(3), conv(in_channels, ngf, 7), norm(ngf), nn.ReLU(True)]
        ch = ngf
        for _ in range(2):
            layers += [conv(ch, ch * 2, 3, stride=2, padding=1), norm(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResnetBlock(spatial_dims, ch) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [
                convt(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                norm(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        last = conv(ch, out_channels, 7)
        if self.residual:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers += [pad(3), last, nn.Tanh()]
        self.model = nn.Sequential(*layers)

    @property
    def input_prior_channels(self) -> bool:
        """Whether the input includes slices of the input-domain mean (``input_prior``)."""
        return hasattr(self, "input_prior")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            return self.model(x)
        return (x[:, -self.out_channels :] + self.model(x)).clamp(-1.0, 1.0)


class UnetGenerator(nn.Module):
    """Pix2Pix-style U-Net (MONAI ``UNet``: stride-2 convs, instance norm, LeakyReLU,
    skip connections) with a tanh output. Sizes must be multiples of ``2**n_down``."""

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        n_down: int = 4,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        channels = tuple(ngf * min(2**i, 8) for i in range(n_down + 1))
        self.size_multiple = 2**n_down
        self.unet = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=channels,
            strides=(2,) * n_down,
            num_res_units=0,
            act=("LEAKYRELU", {"negative_slope": 0.2}),
            norm="INSTANCE",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.unet(x))


class PatchGAN(nn.Module):
    """70x70 PatchGAN (3 stride-2 layers; MONAI ``PatchDiscriminator``, instance norm).

    Returns the raw (logit) map of real/fake decisions, one per receptive field.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, ndf: int = 64) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        self.net = PatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=ndf,
            in_channels=in_channels,
            num_layers_d=3,
            norm="INSTANCE",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "PatchGAN",
    "ResnetBlock",
    "ResnetGenerator",
    "UnetGenerator",
    "count_parameters",
    "register_priors",
]
