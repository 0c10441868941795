"""Stdlib logging for the ``covr_ray`` logger tree (one format, set once per process)."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> logging.Logger:
    """Attach one stderr handler to the ``covr_ray`` logger (idempotent) and set its level."""
    logger = logging.getLogger("covr_ray")
    if not any(getattr(h, "_covr", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._covr = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger


def get_logger(name: str) -> logging.Logger:
    """Logger under the ``covr_ray`` tree: ``get_logger(__name__)``."""
    return logging.getLogger(name if name.startswith("covr_ray") else f"covr_ray.{name}")
