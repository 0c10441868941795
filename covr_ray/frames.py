"""Frames as the VLM sees them: the newest frame of a stacked observation, and its PNG codec.

One home for the PNG codec of frames: D_f rows and kept sets store frames as PNG (:mod:`covr_ray.df`),
the LoRA trainer decodes them (:mod:`covr_ray.lora.data`), the prior service's HTTP front end decodes
posted images (:mod:`covr_ray.prior.http`).
"""

from __future__ import annotations

import io

import numpy as np

from covr_ray.errors import FinetuneDataError, ShardError


def encode_frame(frame: np.ndarray) -> bytes:
    """PNG bytes of one frame.

    Args:
        frame: (H, W, 3) or (H, W, 1) or (H, W) uint8 (RGB or grayscale, channels last).
    """
    from PIL import Image

    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise FinetuneDataError(f"frame dtype {arr.dtype}; expected uint8")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)) or min(arr.shape[:2]) < 1:
        raise FinetuneDataError(f"frame shape {np.asarray(frame).shape}; expected (H, W, 3), (H, W, 1) or "
                                "(H, W) channels-last (use latest_frame() on a stacked (3k, H, W) obs)")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_frame(png: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame from PNG bytes (grayscale frames are repeated over 3 channels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png)) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ShardError(f"frame of {len(png)} bytes is not a readable PNG ({exc})") from exc


def latest_frame(obs: np.ndarray, channels: int = 3) -> np.ndarray:
    """Newest frame of a channels-first frame stack, channels last.

    Args:
        obs: (channels * k, H, W) uint8 stacked observation (oldest first), as the env wrappers emit.
        channels: channels per frame (3 RGB, 1 grayscale).

    Returns:
        (H, W, channels) uint8.
    """
    arr = np.asarray(obs)
    if arr.ndim != 3 or arr.shape[0] % channels or arr.shape[0] < channels:
        raise FinetuneDataError(f"obs shape {arr.shape}; expected ({channels} * k, H, W)")
    return np.ascontiguousarray(np.moveaxis(arr[-channels:], 0, -1))
