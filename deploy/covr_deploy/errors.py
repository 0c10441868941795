"""Errors of the deploy runtime (it imports nothing from covr_ray, so it has its own)."""

from __future__ import annotations


class DeployError(Exception):
    """An artifact directory is missing, malformed, corrupted (sha256 mismatch) or needs an absent backend."""


class ObservationError(DeployError, ValueError):
    """An observation or frame given to the runtime has the wrong shape or dtype."""
