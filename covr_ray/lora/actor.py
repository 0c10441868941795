"""The LoRA trainer as a Ray actor: started once per run, one call per fine-tune round, every wait bounded.

A round is one remote call, :meth:`LoRATrainer.train_round`. :func:`train_round_remote` submits it and
waits (the synchronous round); :func:`submit_round`, :func:`round_ready` and :func:`round_result` are the
same call split in three, so that the loop can keep training while the VLM trains (``schedule.async_rounds``,
:mod:`covr_ray.loop.rounds`): submit, poll without blocking, then read the result, with the same typed
errors either way.

**Test-only delay.** ``COVR_TEST_ONLY_LORA_ROUND_DELAY_S`` (:data:`TEST_ROUND_DELAY_ENV`), read by
:func:`start_lora_trainer` in the driver, makes the started actor sleep that many seconds at the start of
every round, inside the remote call and before the real :meth:`LoRATrainer.train_round` runs (so outside
its ``lora/round_s`` and ``lora.max_round_s`` budget, but inside the driver's wait for the round). It exists
so that tests can make a round long on purpose (``tests/test_async_rounds.py``: the learner keeps training
during an asynchronous round, a checkpoint lands mid-round). Nothing else reads it; a warning is logged
whenever it is set. Never set it in a real run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional, Union

from covr_ray.config import RaySection
from covr_ray.errors import ConfigError, LoRATrainerError, ShardError
from covr_ray.log import get_logger
from covr_ray.lora.trainer import LoRATrainer, RoundResult

log = get_logger(__name__)

#: Environment variable of the test-only round delay (seconds; see the module docstring).
TEST_ROUND_DELAY_ENV = "COVR_TEST_ONLY_LORA_ROUND_DELAY_S"


class DelayedRoundLoRATrainer(LoRATrainer):
    """TEST ONLY: the real :class:`LoRATrainer`, which sleeps ``test_only_round_delay_s`` seconds at the start
    of every :meth:`train_round` (see the module docstring). Started by :func:`start_lora_trainer` only when
    :data:`TEST_ROUND_DELAY_ENV` is set."""

    def __init__(self, *args: Any, test_only_round_delay_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.test_only_round_delay_s = float(test_only_round_delay_s)

    def train_round(self, *args: Any, **kwargs: Any) -> RoundResult:
        log.warning("LoRA trainer: sleeping %g s before the round (%s, test only)", self.test_only_round_delay_s,
                    TEST_ROUND_DELAY_ENV)
        time.sleep(self.test_only_round_delay_s)
        return super().train_round(*args, **kwargs)


def round_delay_from_env() -> float:
    """The test-only round delay from :data:`TEST_ROUND_DELAY_ENV` (0 when unset).

    Raises:
        ConfigError: the variable is set to something other than a finite number of seconds >= 0.
    """
    text = os.environ.get(TEST_ROUND_DELAY_ENV, "").strip()
    if not text:
        return 0.0
    try:
        delay = float(text)
    except ValueError:
        delay = float("nan")
    if not (delay >= 0 and delay != float("inf")):
        raise ConfigError(TEST_ROUND_DELAY_ENV, text, "a finite number of seconds >= 0 (test only; unset it "
                          "in real runs)")
    return delay


def start_lora_trainer(ray_cfg: RaySection, *, name: Optional[str] = None, **trainer_kwargs: Any) -> Any:
    """Start :class:`LoRATrainer` as a Ray actor (``ray_cfg.num_gpus_lora`` GPUs, restarts per
    ``ray_cfg.max_actor_restarts``; a restarted actor resumes from the newest adapter version).

    ``trainer_kwargs`` are :class:`LoRATrainer`'s arguments. Returns the actor handle. With
    :data:`TEST_ROUND_DELAY_ENV` set (tests only) the actor is a :class:`DelayedRoundLoRATrainer`.

    Raises:
        ConfigError: :data:`TEST_ROUND_DELAY_ENV` holds no valid delay (checked before anything starts).
    """
    import ray

    delay = round_delay_from_env()
    trainer_cls: type = LoRATrainer
    if delay > 0:
        log.warning("%s=%g: the LoRA trainer sleeps %g s at the start of every round (a test-only hook; unset it "
                    "in real runs)", TEST_ROUND_DELAY_ENV, delay, delay)
        trainer_cls = DelayedRoundLoRATrainer
        trainer_kwargs = dict(trainer_kwargs, test_only_round_delay_s=delay)
    actor_cls = ray.remote(trainer_cls)
    options: dict[str, Any] = {"num_cpus": ray_cfg.num_cpus_lora, "num_gpus": ray_cfg.num_gpus_lora,
                               "max_restarts": ray_cfg.max_actor_restarts}
    if name:
        options["name"] = name
    return actor_cls.options(**options).remote(**trainer_kwargs)


def submit_round(actor: Any, kept_set: Union[str, Path], version: Optional[int] = None) -> Any:
    """Submit :meth:`LoRATrainer.train_round` on ``kept_set`` to the actor; returns its ``ObjectRef`` at once
    (read it with :func:`round_result`)."""
    return actor.train_round.remote(str(kept_set), version)


def round_ready(ref: Any) -> bool:
    """True when the round of ``ref`` has ended (with a result or an error); never blocks
    (``ray.wait(timeout=0)``)."""
    import ray

    ready, _ = ray.wait([ref], num_returns=1, timeout=0)
    return bool(ready)


def round_result(ref: Any, kept_set: Union[str, Path], timeout_s: float,
                 limit_s: Optional[float] = None) -> RoundResult:
    """The result of a submitted round, waiting at most ``timeout_s`` seconds (what is left of the round's
    ``limit_s``, its whole time limit, when the round was submitted earlier; None = ``timeout_s``).

    Raises:
        LoRATrainerError: the round timed out (it is cancelled) or the actor died; errors the round raised
            on purpose (ShardError, LoRATrainerError, ConfigError) come through as themselves.
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    try:
        return ray.get(ref, timeout=timeout_s)
    except GetTimeoutError as exc:
        ray.cancel(ref)
        raise LoRATrainerError(f"LoRA round on {kept_set} did not finish within "
                               f"{timeout_s if limit_s is None else limit_s:g} s "
                               "(ray.get_timeout_s); the round's kept set stays on disk for a retry") from exc
    except RayActorError as exc:
        raise LoRATrainerError(f"the LoRA trainer actor died during the round on {kept_set}: {exc}") from exc
    except RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        if isinstance(cause, (LoRATrainerError, ConfigError, ShardError)):
            raise cause from exc
        raise LoRATrainerError(f"the LoRA round on {kept_set} failed: {exc}") from exc


def train_round_remote(actor: Any, kept_set: Union[str, Path], timeout_s: float,
                       version: Optional[int] = None) -> RoundResult:
    """Run :meth:`LoRATrainer.train_round` on the actor and wait at most ``timeout_s`` seconds.

    Raises:
        LoRATrainerError: the round timed out or the actor died; errors the round raised on purpose
            (ShardError, LoRATrainerError, ConfigError) come through as themselves.
    """
    return round_result(submit_round(actor, kept_set, version), kept_set, timeout_s)
