"""Image augmentation of the ``rad`` base: random shift (pad, then crop back to the original size).

RAD's best DMControl augmentation is a random crop/translate; DrQ's equivalent is "pad by 4 with
replicate padding, random crop back to 84x84". Both are an integer shift of up to ``pad`` pixels in
each direction with the border pixels repeated. This module does exactly that with two ``gather``
calls, without building the padded tensor, on any dtype (uint8 included) and on any device.
"""

from __future__ import annotations

import torch
from torch import nn

from covr_ray.errors import ConfigError


class RandomShift(nn.Module):
    """Shift each image of a batch by its own random integer offset in ``[-pad, pad]`` (both axes).

    Equivalent to replicate-padding by ``pad`` pixels and cropping a random ``H x W`` window, which is
    DrQ's / RAD's random shift. Every channel of one sample shares the offset (frames of a stack move
    together). ``pad = 0`` returns the input unchanged.

    Shapes: ``x: (B, C, H, W)`` any dtype -> ``(B, C, H, W)`` same dtype and device.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
            raise ConfigError("sac.augmentation_pad", pad, "an integer >= 0")
        self.pad = pad

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError("augment input", tuple(x.shape), "a (B, C, H, W) image batch")
        if self.pad == 0:
            return x
        b, c, h, w = x.shape
        offsets = torch.randint(0, 2 * self.pad + 1, (b, 2), device=x.device, generator=generator)
        rows = (torch.arange(h, device=x.device).unsqueeze(0) + offsets[:, :1] - self.pad).clamp_(0, h - 1)
        cols = (torch.arange(w, device=x.device).unsqueeze(0) + offsets[:, 1:] - self.pad).clamp_(0, w - 1)
        x = x.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w))
        return x.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"
