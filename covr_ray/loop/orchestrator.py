"""The COVR loop: VLM-guided RL and RL-tuned VLM, alternating, with every actor alive the whole time.

One screen shows every part and its role (:meth:`CovrRun.setup`)::

    prior    = start_prior_replicas(...)       # Ray actors: vLLM-served VLM, answers batched prior queries
    lora     = start_lora_trainer(...)         # Ray actor: LoRA fine-tunes the VLM on kept D_f shards
    algo     = build_algorithm_config(...)     # RLlib SAC: env runners (simulators + prior client +
               .callbacks(DfRecorderCallback)  #   D_f recorder) and the learner with the regularised loss
    schedule = FinetuneSchedule(cfg.schedule)  # when rounds happen, when guidance switches on
    sink     = MetricsSink(...)                # the one metrics writer

:meth:`CovrRun.run` then repeats ``algo.train()`` (sampling + SAC updates) and, at the schedule's env-step
points (the clock starts after the uniform-random warm-up), a fine-tune round
(:mod:`covr_ray.loop.finetune_round`, driven by :mod:`covr_ray.loop.rounds`): the critic bootstraps
truncated D_f episodes, EDDF + RALW turn the env runners' D_f shards into a kept shard set, the LoRA trainer
writes adapter ``v<N>`` (with ``schedule.async_rounds``, the default, while ``algo.train()`` goes on), every
prior replica hot-swaps it, D_f's consumed shards are deleted, and lambda is set to ``sac.lam`` once
``cold_start_rounds`` rounds have completed (0 before: the update is then the base algorithm's). A failed
round keeps D_f and does not count. A checkpoint records a round in flight; a resume finishes it. Priors
older than ``prior.max_age_versions`` adapter versions are masked when the replay is sampled; a stretch of
``prior.starved_after_env_steps`` env steps without a new prior is reported (``loop/prior_starved``).
Checkpoints and evaluations happen every ``schedule.checkpoint_every`` / ``schedule.eval_every`` env steps
and at the end (after a round still in flight is collected).

Resuming (``covr train --resume``, after a clean stop or a crash): the run directory's driver lock keeps a
second driver out, the persisted run id names the new actors as before (leftovers of a killed driver are
removed first), the algorithm is built from the run's config and restored from the newest checkpoint, so
the env runners query the new prior service.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from tqdm.auto import tqdm

from covr_envs.registry import resolve_env_spec
from covr_ray.config import CovrConfig
from covr_ray.df.recorder import ENV_CONFIG_KEY, DfRecorderCallback
from covr_ray.errors import PriorServiceError
from covr_ray.evaluate import eval_metrics, eval_seed, evaluate_policy, write_eval_result
from covr_ray.io import atomic_directory
from covr_ray.log import get_logger
from covr_ray.loop.actors import lora_actor_name, remove_leftover_actors, run_actor_names
from covr_ray.loop.resources import check_resources
from covr_ray.loop.rounds import RoundDriver
from covr_ray.loop.schedule import FinetuneSchedule, prior_weight
from covr_ray.lora.actor import start_lora_trainer
from covr_ray.metrics import RESUMED_KEY, MetricsSink
from covr_ray.policy_io import load_policy, policy_meta, save_policy
from covr_ray.preflight import check_paths
from covr_ray.prior.client_stats import PriorClientStatsCallback
from covr_ray.prior.codecs import get_codec
from covr_ray.prior.metrics import aggregate_replicas
from covr_ray.prior.prompts import build_instruction
from covr_ray.prior.service import start_prior_replicas
from covr_ray.rl.algo import (build_algorithm_config, learner_metrics, learner_threads, network_spec_for,
                              policy_state_dict, replay_buffer, restore_checkpoint, result_value, save_checkpoint,
                              set_prior_age_limit, set_prior_weight)
from covr_ray.run_dir import RunDir, read_loop_state, rng_state, set_rng_state, write_loop_state

log = get_logger(__name__)


def default_run_dir(cfg: CovrConfig) -> Path:
    return Path("runs") / f"{cfg.preset}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


class CovrRun:
    """One COVR training run (new or resumed). Use :meth:`new` or :meth:`resume`, then :meth:`run`.

    Args:
        cfg: the validated config.
        run: the run directory.
        checkpoint: resume from this checkpoint (None = start fresh).
        ray_init_kwargs: extra ``ray.init`` arguments (tests pass their own ``_temp_dir``).
        progress: show a progress bar over env steps.
    """

    def __init__(self, cfg: CovrConfig, run: RunDir, checkpoint: Optional[Path] = None,
                 ray_init_kwargs: Optional[dict[str, Any]] = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = run
        self.checkpoint_path = checkpoint
        self.ray_init_kwargs = dict(ray_init_kwargs or {})
        self.progress = progress
        self.run_id = run.run_id
        self.env_steps = 0
        self.adapter_version = -1
        self.entropy: Optional[float] = None
        self.initial_entropy: Optional[float] = None
        self._priors_seen = -1
        self._last_prior_at = 0
        self._was_starved = False
        self.longest_prior_silence = 0
        self.prior: list[Any] = []
        self.lora: Any = None
        self.algo: Any = None
        self.sink: Any = None
        self.history: list[dict[str, float]] = []
        self._next_checkpoint = cfg.schedule.checkpoint_every
        self._next_eval = cfg.schedule.eval_every
        self._last_prior_log = 0.0
        self._last_eval: Optional[dict[str, Any]] = None
        self._last_eval_steps = -1
        self.rounds = RoundDriver(self)  # fine-tune rounds, in flight or not (covr_ray.loop.rounds)
        self._round_in_flight: Optional[dict[str, Any]] = None  # as a checkpoint recorded it

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def new(cls, cfg: CovrConfig, **kwargs: Any) -> "CovrRun":
        root = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
        return cls(cfg, RunDir.create(root, cfg), **kwargs)

    @classmethod
    def resume(cls, root: str | Path, **kwargs: Any) -> "CovrRun":
        run, cfg = RunDir.open(root)
        checkpoint = run.latest_checkpoint()
        if checkpoint is None:
            log.warning("%s has no complete checkpoint yet: starting it from the beginning", run.root)
        return cls(cfg, run, checkpoint=checkpoint, **kwargs)

    @property
    def timeout_s(self) -> float:
        return self.cfg.ray.get_timeout_s

    def setup(self) -> "CovrRun":
        """Start Ray and every actor (see the module docstring); restore state when resuming."""
        cfg = self.cfg
        check_paths(cfg)  # bad paths fail here, before the lock, Ray or any actor
        self.run_dir.lock()  # before anything is started or written: one driver per run
        if not ray.is_initialized():
            ray.init(address=cfg.ray.address, **self.ray_init_kwargs)
        check_resources(cfg)  # asks that cannot fit fail (fixed cluster) or are waited for, logged
        spec = resolve_env_spec(cfg.env)
        self.env_spec = spec
        self.sink = MetricsSink(self.run_dir.root, cfg.logging, run_name=self.run_dir.root.name,
                                config=cfg.to_dict())
        # the round clock starts when the uniform warm-up (sac.learning_starts agent steps) ends
        self.schedule = FinetuneSchedule(cfg.schedule, start_at=cfg.sac.learning_starts * cfg.env.action_repeat)
        if cfg.prior.enabled:
            self._start_vlm_actors(spec)
        run_context = {"covr": cfg.to_dict(), "run_id": self.run_id,
                       ENV_CONFIG_KEY: ({"run_dir": str(self.run_dir.root), "gamma": cfg.sac.gamma,
                                         "action_dim": spec.action_dim, "teach_action": cfg.lora.teach_action}
                                        if cfg.prior.enabled else None)}
        # Always built from the run's config (never from the config pickled in a checkpoint): the env
        # runners get this run's context, so they query the prior service started just above.
        algo_config = build_algorithm_config(cfg, run_context=run_context)
        algo_config.callbacks([DfRecorderCallback, PriorClientStatsCallback])
        threads = learner_threads(cfg)
        if threads is not None:  # before the learner exists: its updates run on this process's threads
            torch.set_num_threads(threads)
        log.info("learner: %d torch threads (%s)", torch.get_num_threads(),
                 "ray.learner_threads" if cfg.ray.learner_threads else
                 "CPUs less the actors' reservations" if threads is not None else "torch's default")
        self.algo = algo_config.build_algo()
        if self.checkpoint_path is not None:
            self._restore()
        set_prior_weight(self.algo, self.current_lambda(), timeout_s=self.timeout_s)
        set_prior_age_limit(self.algo, self.adapter_version, cfg.prior.max_age_versions)
        self._last_prior_at = self.env_steps
        # Before the rounds' restore: what it logs belongs to this timeline (read_csv_metrics cuts at this row).
        self.sink.log({RESUMED_KEY: float(self.checkpoint_path is not None),
                       "learner/torch_threads": float(torch.get_num_threads())}, step=self.env_steps)
        self.rounds.restore(self._round_in_flight)  # rounds in flight or done since the checkpoint: collect or rerun
        log.info("run %s: %s, env steps %d of %d, round %d, adapter v%d, lambda %.3g", self.run_id,
                 self.run_dir.root, self.env_steps, cfg.schedule.total_env_steps, self.schedule.round,
                 self.adapter_version, self.current_lambda())
        return self

    def _start_vlm_actors(self, spec: Any) -> None:


        cfg = self.cfg
        remove_leftover_actors(run_actor_names(self.run_id, cfg.ray.prior_replicas))
        self.prior = start_prior_replicas(cfg, run_id=self.run_id, adapter_dir=self.run_dir.adapters,
                                          codec=spec.codec, action_dim=spec.action_dim, task_prompt=spec.prompt,
                                          action_description=spec.action_description)
        instruction = build_instruction(spec.prompt, spec.action_description, get_codec(spec.codec, spec.action_dim))
        self.lora = start_lora_trainer(cfg.ray, name=lora_actor_name(self.run_id), model=cfg.prior.model,
                                       lora=cfg.lora, codec_name=spec.codec, action_dim=spec.action_dim,
                                       prompt_text=instruction, adapter_root=str(self.run_dir.adapters),
                                       device=cfg.device, dtype=cfg.prior.dtype, family=cfg.prior.family,
                                       seed=cfg.seed, progress=False)
        try:
            infos = ray.get([h.info.remote() for h in self.prior], timeout=self.timeout_s)
            lora_info = ray.get(self.lora.info.remote(), timeout=self.timeout_s)
        except (GetTimeoutError, RayActorError, RayTaskError) as exc:
            raise PriorServiceError(f"the VLM actors did not start within {self.timeout_s} s: {exc}") from exc
        self.adapter_version = max(int(i["version"]) for i in infos)
        log.info("prior service: %s; LoRA trainer: %s", infos[0], lora_info)
        self.sink.log({"lora/trainable_frac": float(lora_info.get("trainable_frac", math.nan))}, step=self.env_steps)

    def _restore(self) -> None:

        state = read_loop_state(self.checkpoint_path)
        restore_checkpoint(self.algo, self.checkpoint_path / "algorithm")
        self.env_steps = int(state["env_steps"])
        self.schedule = FinetuneSchedule.from_dict(self.cfg.schedule, state["schedule"])
        self.entropy = state.get("entropy")
        self.initial_entropy = state.get("initial_entropy")
        self._next_checkpoint = int(state["next_checkpoint"])
        self._next_eval = int(state["next_eval"])
        self._round_in_flight = state.get("round_in_flight")
        set_rng_state(state["rng"])
        log.info("resumed from %s at %d env steps (round %d)", self.checkpoint_path, self.env_steps,
                 self.schedule.round)

    # --- the loop -----------------------------------------------------------------------------------

    def current_lambda(self) -> float:
        """lambda of the regulariser now (:func:`covr_ray.loop.schedule.prior_weight`)."""
        return prior_weight(self.cfg, self.schedule.guidance_on)

    def run(self, stop_at_env_steps: Optional[int] = None) -> dict[str, Any]:
        """Train until ``schedule.total_env_steps``; returns a summary dict.

        ``stop_at_env_steps`` stops early, after the first iteration past that many env steps, without the
        final evaluation and checkpoint: what a preempted job or a crash leaves behind (the run continues
        with ``covr train --resume``).
        """
        if self.algo is None:
            self.setup()
        cfg = self.cfg
        total = cfg.schedule.total_env_steps
        bar = tqdm(total=total, initial=min(self.env_steps, total), desc="env steps", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        final_eval: Optional[dict[str, Any]] = None
        try:
            while self.env_steps < total:
                result = self.algo.train()
                agent_steps = int(result_value(result, "env_runners", "num_env_steps_sampled_lifetime") or 0)
                new_steps = agent_steps * cfg.env.action_repeat
                bar.update(max(0, min(new_steps, total) - self.env_steps))
                self.env_steps = max(self.env_steps, new_steps)
                metrics = learner_metrics(result)
                if "learner/entropy" in metrics:
                    self.entropy = metrics["learner/entropy"]
                    if self.initial_entropy is None:
                        self.initial_entropy = self.entropy
                metrics.update({"loop/env_steps": float(self.env_steps), "loop/round": float(self.schedule.round),
                                "loop/lambda": self.current_lambda(),
                                "lora/adapter_version": float(self.adapter_version),
                                "loop/round_in_flight": float(self.rounds.in_flight is not None)})
                metrics.update(self._prior_health())
                self.sink.log(metrics, step=self.env_steps)
                self._log_prior_metrics()
                if cfg.prior.enabled and self.rounds.step():  # submit / collect / run a round (sync)
                    bar.set_postfix(round=self.schedule.round, adapter=self.adapter_version)
                if self.env_steps >= total:  # the last iteration: a round in flight is collected (bounded wait)
                    self.rounds.finish()
                    self._log_prior_metrics(force=True)  # the service's state after the last round
                if self.env_steps >= self._next_eval:
                    self.evaluate()
                    self._next_eval = self.env_steps + cfg.schedule.eval_every
                if self.env_steps >= self._next_checkpoint:
                    self._next_checkpoint = self.env_steps + cfg.schedule.checkpoint_every
                    self.checkpoint()
                if stop_at_env_steps is not None and self.env_steps >= stop_at_env_steps:
                    break
            else:
                final_eval = self._last_eval if self._last_eval_steps == self.env_steps else self.evaluate()
                self.checkpoint()
        finally:
            bar.close()
        summary = {"run_dir": str(self.run_dir.root), "env_steps": self.env_steps, "rounds": self.schedule.round,
                   "failed_rounds": self.schedule.failed, "adapter_version": self.adapter_version,
                   "longest_prior_silence_env_steps": self.longest_prior_silence,
                   "wall_s": time.perf_counter() - t0,
                   "eval": final_eval if self.env_steps >= total else None}
        log.info("run finished: %s", summary)
        if self.cfg.prior.enabled and self.longest_prior_silence >= self.cfg.prior.starved_after_env_steps:
            log.warning("this run's VLM prior was starved: up to %d env steps passed without a new prior (see "
                        "loop/prior_starved in the metrics)", self.longest_prior_silence)
        return summary

    def _prior_health(self) -> dict[str, float]:
        """``loop/prior_starved``: 1 while no new prior has reached the replay for ``prior.starved_after_env_steps``
        env steps (a warning is logged when it starts and when priors return); ``loop/priors_added``."""
        if not self.cfg.prior.enabled:
            return {}
        core = replay_buffer(self.algo).core
        added = int(core.counters.get("priors_added", 0)) if core is not None else 0
        if added != self._priors_seen:
            if self._was_starved:
                log.warning("VLM priors reach the replay again at %d env steps", self.env_steps)
            self._priors_seen, self._last_prior_at = added, self.env_steps
        silent = self.env_steps - self._last_prior_at
        starved = silent >= self.cfg.prior.starved_after_env_steps
        if starved and not self._was_starved:
            log.warning("NO VLM PRIOR has reached the replay for %d env steps (prior.starved_after_env_steps=%d): "
                        "the prior service (%s) is down, unreachable or answers nothing, and guidance (lambda "
                        "%.3g) has nothing to pull toward", silent, self.cfg.prior.starved_after_env_steps,
                        ", ".join(run_actor_names(self.run_id, self.cfg.ray.prior_replicas)[:-1]), self.current_lambda())
        self._was_starved = starved
        self.longest_prior_silence = max(self.longest_prior_silence, silent)
        return {"loop/prior_starved": float(starved), "loop/priors_added": float(added),
                "loop/env_steps_since_prior": float(silent)}

    def _log_prior_metrics(self, force: bool = False) -> None:
        """The prior replicas' metrics, at most every ``logging.log_every_s`` (``force``: now)."""
        if not self.prior or (not force and time.monotonic() - self._last_prior_log < self.cfg.logging.log_every_s):
            return


        self._last_prior_log = time.monotonic()
        stats = []
        for replica, handle in enumerate(self.prior):  # every replica: their counts add up to the run's
            try:
                stats.append(ray.get(handle.metrics.remote(), timeout=min(self.timeout_s, 30.0)))
            except (GetTimeoutError, RayActorError, RayTaskError) as exc:
                log.warning("metrics of prior replica %d unavailable: %s", replica, exc)
        self.sink.log(aggregate_replicas(stats), step=self.env_steps)

    # --- checkpoints, policy, eval ------------------------------------------------------------------

    def save_policy(self) -> Path:
        """Write the deployable policy (encoder + actor) of the learner now; returns its path."""
        state = policy_state_dict(self.algo, timeout_s=self.timeout_s)
        meta = policy_meta(self.cfg, self.env_steps, self.env_spec.action_dim)
        return save_policy(self.run_dir.policy, network_spec_for(self.algo), state, meta)

    def checkpoint(self) -> Path:
        """Write a complete checkpoint (algorithm + replay, loop state, RNG) and point LATEST at it."""
        path = self.run_dir.checkpoint(self.env_steps)
        if (path / "loop_state.json").is_file():
            return path  # already saved at these env steps
        with atomic_directory(path) as tmp:
            save_checkpoint(self.algo, tmp / "algorithm")
            write_loop_state(tmp, {"env_steps": self.env_steps, "schedule": self.schedule.to_dict(),
                                   "adapter_version": self.adapter_version, "entropy": self.entropy,
                                   "initial_entropy": self.initial_entropy,
                                   "round_in_flight": self.rounds.state(),
                                   "next_checkpoint": self._next_checkpoint, "next_eval": self._next_eval,
                                   "run_id": self.run_id, "rng": rng_state()})
        self.run_dir.commit_checkpoint(path)
        self.save_policy()
        log.info("checkpoint %s", path)
        return path

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the policy network alone (no VLM) and log ``eval/*``."""
        policy, _meta = load_policy(self.save_policy())
        result = evaluate_policy(policy, self.cfg.env, self.cfg.schedule.eval_episodes,
                                 seed=(eval_seed(self.cfg) + self.env_steps) % 2**32)
        result["env_steps"] = self.env_steps
        write_eval_result(self.run_dir.root, result)
        self.sink.log(eval_metrics(result), step=self.env_steps)
        self._last_eval, self._last_eval_steps = result, self.env_steps
        return result

    def close(self) -> None:
        """Stop the algorithm and actors, flush metrics (Ray itself is left running for the caller)."""
        if self.algo is not None:
            self.algo.stop()
            self.algo = None
        if self.prior:  # a clean engine stop first (it flushes the engine's log summaries), bounded
            try:
                ray.get([h.shutdown.remote() for h in self.prior], timeout=min(self.timeout_s, 30.0))
            except (GetTimeoutError, RayActorError, RayTaskError) as exc:
                log.warning("prior service did not stop cleanly (%s); killing it", exc)
        self.rounds.abandon()
        for handle in self.prior + ([self.lora] if self.lora is not None else []):
            ray.kill(handle, no_restart=True)
        self.prior, self.lora = [], None
        if self.sink is not None:
            self.sink.close()
        self.run_dir.unlock()
