"""Write a list of RGB frames as an MP4 (imageio + its ffmpeg plugin) or an animated GIF (Pillow).

    from covr_ray.video import write_video
    write_video(frames, "eval/video-10000.mp4", fps=15)     # frames: list of (H, W, 3) uint8

The format follows the file's suffix. MP4 needs the ``video`` extra (``imageio``, ``imageio-ffmpeg``);
GIF needs only Pillow, a core dependency. Small frames (84x84) are scaled up by an integer factor with
nearest-neighbour so the video is watchable; pixels are not interpolated.
"""

from __future__ import annotations

import importlib.util
import io
import tempfile
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from covr_ray.errors import ConfigError, DependencyMissingError
from covr_ray.io import atomic_write_bytes

VideoFormat = Literal["auto", "mp4", "gif"]
MIN_DISPLAY_SIZE = 256
"""Frames smaller than this (pixels, the larger side) are scaled up by an integer factor."""


def mp4_available() -> bool:
    """True when imageio and its ffmpeg plugin are installed."""
    return importlib.util.find_spec("imageio") is not None and importlib.util.find_spec("imageio_ffmpeg") is not None


def resolve_format(fmt: str) -> str:
    """``auto`` -> ``mp4`` when :func:`mp4_available`, else ``gif``; ``mp4`` / ``gif`` pass through.

    Raises:
        ConfigError: another value.
        DependencyMissingError: ``mp4`` without imageio / imageio-ffmpeg.
    """
    if fmt not in ("auto", "mp4", "gif"):
        raise ConfigError("--video-format", fmt, "auto, mp4 or gif")
    if fmt == "auto":
        return "mp4" if mp4_available() else "gif"
    if fmt == "mp4" and not mp4_available():
        raise DependencyMissingError("imageio-ffmpeg", "writing MP4 videos", extra="video")
    return fmt


def _prepare(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(frames) == 0:
        raise ConfigError("frames", 0, "at least one (H, W, 3) uint8 frame")
    first = np.asarray(frames[0])
    if first.ndim != 3 or first.shape[-1] != 3 or first.dtype != np.uint8:
        raise ConfigError("frames[0]", f"array {first.shape} {first.dtype}", "(H, W, 3) uint8 RGB frames")
    h, w, _ = first.shape
    scale = max(1, MIN_DISPLAY_SIZE // max(h, w))
    out = []
    for i, frame in enumerate(frames):
        arr = np.asarray(frame)
        if arr.shape != first.shape or arr.dtype != np.uint8:
            raise ConfigError(f"frames[{i}]", f"array {arr.shape} {arr.dtype}", f"{first.shape} uint8 like frame 0")
        if scale > 1:
            arr = arr.repeat(scale, axis=0).repeat(scale, axis=1)
        # H.264 with yuv420p needs even sides; pad one black row / column when odd.
        pad_h, pad_w = arr.shape[0] % 2, arr.shape[1] % 2
        if pad_h or pad_w:
            arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)))
        out.append(np.ascontiguousarray(arr))
    return out


def _encode_mp4(frames: list[np.ndarray], fps: float) -> bytes:
    import imageio.v2 as imageio

    # The ffmpeg plugin writes only to a file name: encode into a private temp dir, then hand back bytes
    # (the caller writes them atomically).
    with tempfile.TemporaryDirectory(prefix="covr-video-") as tmp:
        target = Path(tmp) / "video.mp4"
        # macro_block_size=1: keep our (even) size instead of imageio resizing to a multiple of 16.
        with imageio.get_writer(target, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                macro_block_size=1, pixelformat="yuv420p") as writer:
            for frame in frames:
                writer.append_data(frame)
        return target.read_bytes()


def _encode_gif(frames: list[np.ndarray], fps: float) -> bytes:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, int(round(1000.0 / fps))), loop=0)
    return buffer.getvalue()


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float = 15.0) -> Path:
    """Encode ``frames`` (each ``(H, W, 3) uint8``) to ``path`` (``.mp4`` or ``.gif``), atomically.

    Raises:
        ConfigError: no frames, frames of different shapes or not uint8 RGB, a bad fps, another suffix.
        DependencyMissingError: ``.mp4`` without imageio / imageio-ffmpeg.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ConfigError("video path", str(path), "a file name ending in .mp4 or .gif")
    if not 0 < fps <= 240:
        raise ConfigError("fps", fps, "0 < fps <= 240")
    prepared = _prepare(frames)
    if suffix == ".mp4":
        resolve_format("mp4")
        data = _encode_mp4(prepared, fps)
    else:
        data = _encode_gif(prepared, fps)
    atomic_write_bytes(path, data)
    return path
