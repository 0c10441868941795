"""Typed errors of COVR-Ray.

Every error names the offending value and says what to do. Catch :class:`CovrError` to catch them all.
"""

from __future__ import annotations

from typing import Any


class CovrError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(CovrError, ValueError):
    """A configuration value is invalid, unknown or conflicts with another.

    Attributes:
        field: dotted path of the offending field (``"sac.lam"``), or ``""`` for the whole config.
        value: the value that was rejected.
        allowed: a human-readable description of what is accepted.
    """

    def __init__(self, field: str, value: Any, allowed: str, hint: str = "") -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        msg = f"config field {field!r}: got {value!r}; allowed: {allowed}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class PresetNotFoundError(ConfigError):
    """A preset name that is not a shipped preset nor an existing YAML file."""

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__("preset", name, "one of " + ", ".join(sorted(available)) + ", or a path to a .yaml file")


class ModelLoadError(CovrError):
    """A VLM (model, processor or tokenizer) could not be loaded from the given name or path."""


class EnvError(CovrError):
    """An environment could not be created or stepped (unknown name, missing simulator, bad observation)."""


class SimulatorConnectionError(EnvError):
    """The simulator server (CARLA) is unreachable or stopped answering."""


class PriorServiceError(CovrError):
    """The VLM prior service failed to answer (timeout, dead actor, engine error)."""


class CodecError(CovrError, ValueError):
    """An action codec was asked for something it cannot do: unknown codec name, wrong action dimension,
    or an action to encode that is non-finite, mis-shaped or outside [-1, 1]."""


class AdapterError(CovrError):
    """A LoRA adapter was refused: outside the run's adapter directory, malformed, or failed to load."""


class ShardError(CovrError):
    """An Arrow shard is unreadable: wrong schema version, truncated, or not an Arrow file."""


class FinetuneDataError(CovrError, ValueError):
    """A sample, score array or schedule value given to the fine-tune data path (D_f, EDDF, RALW,
    schedule) has the wrong shape, dtype or value."""


class LoRATrainerError(CovrError):
    """A LoRA fine-tune round failed: non-finite loss, the trainer actor died or did not answer in time."""


class MetricsError(CovrError, ValueError):
    """A metric key is not namespaced (``namespace/name``) or a value is not a number."""


class CheckpointError(CovrError):
    """A checkpoint is missing, incomplete or does not match the run's configuration."""


class LearnerError(CovrError):
    """The RL learner got an unusable batch or setting (missing prior columns, bad lambda, bad shapes)."""


class ReplayError(CovrError):
    """The replay buffer refused data: wrong observation shape or dtype, malformed prior, bad sample request."""


class DependencyMissingError(CovrError, ImportError):
    """An optional dependency (vllm, carla, onnxruntime, ...) is needed for the requested feature."""

    def __init__(self, package: str, feature: str, extra: str | None = None) -> None:
        how = f"pip install 'covr-ray[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the package {package!r}, which is not installed: {how}")
        self.package = package


class ExportError(CovrError):
    """A policy export failed: unknown format, the exported model did not reproduce the torch policy's
    actions within tolerance, or an artifact directory is malformed."""


class ReportError(CovrError, ValueError):
    """``covr report`` found nothing to report (no run directories with results) or got a bad option."""
