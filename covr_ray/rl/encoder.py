"""The shared pixel encoder of RAD / DrQ: a small conv stack, trained by the critic only.

Layout (RAD / CURL / DrQ for DMControl): ``num_layers`` 3x3 convolutions with ``num_filters`` channels,
the first with stride 2, the others stride 1, ReLU after each, flattened. For 9x84x84 inputs and 32
filters that is 32 x 35 x 35 = 39,200 features from about 28 K parameters. Actor and critic each put
their own trunk (linear, LayerNorm, tanh) on top of these features (see ``covr_ray.rl.networks``); the
actor reads them detached, so only the critic loss trains the convolutions.

Plain torch, no RLlib: the export path and the plain-PyTorch bench use it as is.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from covr_ray.errors import EnvError


def init_weights(module: nn.Module) -> None:
    """RAD/DrQ initialisation: orthogonal linear layers, delta-orthogonal convolutions, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight.data)
        if module.bias is not None:
            module.bias.data.fill_(0.0)
    elif isinstance(module, nn.Conv2d):
        # Delta-orthogonal: only the kernel centre is non-zero, orthogonal across channels.
        module.weight.data.fill_(0.0)
        if module.bias is not None:
            module.bias.data.fill_(0.0)
        mid = module.weight.size(2) // 2
        nn.init.orthogonal_(module.weight.data[:, :, mid, mid], nn.init.calculate_gain("relu"))


def conv_output_size(size: int, num_layers: int) -> int:
    """Spatial size after the stack: one 3x3/stride-2 conv, then ``num_layers - 1`` 3x3/stride-1."""
    size = (size - 3) // 2 + 1
    return size - 2 * (num_layers - 1)


class PixelEncoder(nn.Module):
    """Conv stack from uint8 pixels to flat features.

    Shapes: ``obs: (B, C, H, W)`` uint8 (or float in [0, 255]) -> ``(B, out_dim)`` in the convolutions'
    dtype (float32 as built; float64 after ``.double()``, which the float64 reference tests use).
    """

    def __init__(self, obs_shape: Sequence[int], num_filters: int = 32, num_layers: int = 4) -> None:
        super().__init__()
        if len(obs_shape) != 3:
            raise EnvError(f"pixel encoder needs (C, H, W) observations, got shape {tuple(obs_shape)}")
        channels, height, width = (int(v) for v in obs_shape)
        if num_layers < 1:
            raise EnvError(f"pixel encoder needs >= 1 conv layer, got {num_layers}")
        out_h, out_w = conv_output_size(height, num_layers), conv_output_size(width, num_layers)
        if out_h < 1 or out_w < 1:
            raise EnvError(f"observation {tuple(obs_shape)} is too small for {num_layers} conv layers; "
                           f"use images of at least {2 * num_layers + 3} pixels")
        layers: list[nn.Module] = [nn.Conv2d(channels, num_filters, 3, stride=2), nn.ReLU()]
        for _ in range(num_layers - 1):
            layers += [nn.Conv2d(num_filters, num_filters, 3, stride=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.obs_shape = (channels, height, width)
        self.out_dim = num_filters * out_h * out_w
        self.apply(init_weights)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``obs: (B, C, H, W)`` -> ``(B, out_dim)``; pixels are cast to the weights' dtype, then scaled to [0, 1]."""
        x = obs.to(self.convs[0].weight.dtype) / 255.0
        return self.convs(x).flatten(1)
