"""Pixel SAC on RLlib's new API stack, with COVR's VLM-regularised actor loss.

Modules (one concept each): ``augment`` (random shift), ``encoder`` (shared conv encoder), ``networks``
(actor, critic, exportable policy), ``rl_module`` (the RLlib RLModule, random warm-up actions),
``regulariser`` (the prior term), ``learner`` (SAC loss + the prior regulariser), ``prior_infos`` (the
prior's step-info contract and adapter versions), ``replay`` (compact uint8 replay with priors; no RLlib),
``rllib_replay`` (its RLlib face), ``training_step`` (SAC's iteration on columnar batches from the
replay), ``algo`` (RLlib config from a CovrConfig, checkpoints, signals for the loop), ``plain`` (the same
update in plain PyTorch: the reference the tests compare the learner with, and ``covr bench learner``'s
baseline), ``plain_train`` (a one-process trainer on it, no Ray).

Torch and Ray are imported by the submodules, not here, so ``import covr_ray.rl`` stays cheap.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys


def guard_triton_against_mesa_egl() -> str:
    """Keep a CPU-torch process from segfaulting when triton loads after Mesa's EGL.

    Measured on the CPU machines: with ``MUJOCO_GL=egl``, ``import ray.rllib`` (which imports
    dm_control) loads Mesa's EGL (llvmpipe, with its own libLLVM); triton's native library, loaded
    later by ``torch.optim.Adam(...)`` (via torch._dynamo) or by RLlib's CPU seeding
    (``torch.use_deterministic_algorithms``), then segfaults. Loading triton *before* EGL is fine.

    So, on CPU torch builds with ``MUJOCO_GL=egl`` only: import triton now if EGL is not loaded yet;
    if EGL is already loaded, mark triton absent (``sys.modules["triton"] = None``) so torch treats it
    as not installed (CPU torch never needs it) instead of crashing. Returns what was done.
    """
    if os.environ.get("MUJOCO_GL", "").lower() != "egl" or "triton" in sys.modules:
        return "not needed"
    try:
        if "+cpu" not in importlib.metadata.version("torch") or importlib.util.find_spec("triton") is None:
            return "not needed"
    except importlib.metadata.PackageNotFoundError:
        return "not needed"
    if "OpenGL.platform.egl" in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]
        return "blocked"
    import triton  # noqa: F401

    return "preloaded"


guard_triton_against_mesa_egl()
