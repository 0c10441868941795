"""The LoRA trainer as a Ray actor: started once per run, one call per fine-tune round, every wait bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from covr_ray.config import RaySection
from covr_ray.errors import ConfigError, LoRATrainerError, ShardError
from covr_ray.lora.trainer import LoRATrainer, RoundResult


def start_lora_trainer(ray_cfg: RaySection, *, name: Optional[str] = None, **trainer_kwargs: Any) -> Any:
    """Start :class:`LoRATrainer` as a Ray actor (``ray_cfg.num_gpus_lora`` GPUs, restarts per
    ``ray_cfg.max_actor_restarts``; a restarted actor resumes from the newest adapter version).

    ``trainer_kwargs`` are :class:`LoRATrainer`'s arguments. Returns the actor handle.
    """
    import ray

    actor_cls = ray.remote(LoRATrainer)
    options: dict[str, Any] = {"num_cpus": ray_cfg.num_cpus_lora, "num_gpus": ray_cfg.num_gpus_lora,
                               "max_restarts": ray_cfg.max_actor_restarts}
    if name:
        options["name"] = name
    return actor_cls.options(**options).remote(**trainer_kwargs)


def train_round_remote(actor: Any, kept_set: Union[str, Path], timeout_s: float,
                       version: Optional[int] = None) -> RoundResult:
    """Run :meth:`LoRATrainer.train_round` on the actor and wait at most ``timeout_s`` seconds.

    Raises:
        LoRATrainerError: the round timed out or the actor died; errors the round raised on purpose
            (ShardError, LoRATrainerError, ConfigError) come through as themselves.
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    ref = actor.train_round.remote(str(kept_set), version)
    try:
        return ray.get(ref, timeout=timeout_s)
    except GetTimeoutError as exc:
        ray.cancel(ref)
        raise LoRATrainerError(f"LoRA round on {kept_set} did not finish within {timeout_s} s "
                               "(ray.get_timeout_s); the round's kept set stays on disk for a retry") from exc
    except RayActorError as exc:
        raise LoRATrainerError(f"the LoRA trainer actor died during the round on {kept_set}: {exc}") from exc
    except RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        if isinstance(cause, (LoRATrainerError, ConfigError, ShardError)):
            raise cause from exc
        raise LoRATrainerError(f"the LoRA round on {kept_set} failed: {exc}") from exc
