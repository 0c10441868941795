"""RLlib SAC for COVR: the algorithm config from a CovrConfig, checkpoints with replay, loop signals.

One readable assembly point: :func:`build_algorithm_config` turns the ``sac``/``env``/``ray`` sections
into RLlib's ``SACConfig`` with our parts:

- module :class:`~covr_ray.rl.rl_module.PixelSACModule` (shared conv encoder; augmentation when
  ``sac.base == "rad"``), learner :class:`~covr_ray.rl.learner.CovrSACLearner`;
- the module acts uniformly at random for the first ``sac.learning_starts`` agent steps (its
  ``forward_exploration``);
- replay :class:`~covr_ray.rl.rllib_replay.CovrEpisodeReplayBuffer`, created by :class:`CovrSAC`
  (``SACConfig.validate`` accepts only built-in buffer names, so the config names one and the
  algorithm builds ours); it reads the priors from the env runners' step infos and stores them as
  columns. :class:`CovrSAC` also saves and restores the replay with each checkpoint, which RLlib's new
  stack does not do;
- training iteration: RLlib's, with each train batch taken from the replay as columns, prior columns
  included (:mod:`covr_ray.rl.training_step`); RLlib's learner connector never runs on them.

How to run (a short pixel SAC run on the embedded driving env, CPU)::

    cfg = load_config("smoke")
    algo = build_algorithm_config(cfg).build_algo()
    for _ in range(10): results = algo.train(); print(learner_metrics(results))

Signals for the loop: :func:`set_prior_weight` / :func:`get_prior_weight` (lambda, switched after the
cold start), :func:`policy_state_dict` + :func:`network_spec_for` (weights and shapes of the deployable
policy), :func:`q_values` (EDDF's Q ablation), :func:`learner_metrics` (namespaced metrics, including
``learner/entropy`` for EDDF).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
from ray.rllib.algorithms.sac.sac import SAC, SACConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from covr_envs.rllib import apply_ray_section, configure_env_runners
from covr_ray.config import CovrConfig
from covr_ray.errors import CheckpointError, ConfigError, LearnerError
from covr_ray.loop.schedule import prior_weight as schedule_prior_weight
from covr_ray.rl.learner import CovrSACLearner, check_prior_weight
from covr_ray.rl.networks import NetworkSpec
from covr_ray.rl.rl_module import PixelSACModule, network_spec
from covr_ray.rl.rllib_replay import CovrEpisodeReplayBuffer
from covr_ray.rl.training_step import columnar_training_step, settle_sampling, store_pending

#: sub-directory of an algorithm checkpoint holding the replay buffer.
REPLAY_DIR = "covr_replay"
#: the single module of a COVR run.
MODULE_ID = "default_policy"


class CovrSAC(SAC):
    """RLlib's SAC with the compact prior-carrying replay, saved and restored with checkpoints."""

    @classmethod
    def get_default_config(cls) -> "CovrSACConfig":
        return CovrSACConfig()

    def _create_local_replay_buffer_if_necessary(self, config: Any) -> CovrEpisodeReplayBuffer:
        rb = dict(config.replay_buffer_config)
        return CovrEpisodeReplayBuffer(capacity=int(rb["capacity"]), frame_stack=int(rb.get("frame_stack", 1)),
                                       seed=config.seed, frame_slack=float(rb.get("frame_slack", 0.125)))

    def training_step(self) -> None:
        """RLlib's SAC iteration with train batches taken from the replay as columns."""
        columnar_training_step(self, MODULE_ID)

    def save_to_path(self, path: Optional[Union[str, Path]] = None, **kwargs: Any) -> str:
        """RLlib's checkpoint (module, optimizers, connectors, metrics) plus ``covr_replay/``, taken with no
        fragment in flight and every counted step in the replay (:func:`~covr_ray.rl.training_step.store_pending`)."""
        store_pending(self)
        out = super().save_to_path(path, **kwargs)
        if self.local_replay_buffer is not None:
            self.local_replay_buffer.save(Path(out) / REPLAY_DIR, overwrite=True)
        return out

    def restore_from_path(self, path: Union[str, Path], *args: Any, **kwargs: Any) -> None:
        # train() returns with the runners idle, so normally nothing is in flight here; after an interrupted
        # train() a fragment may be: wait for it (no runner samples during the restore), then drop it with the
        # rest of the state the restore replaces.
        settle_sampling(self)
        self._covr_pending_episodes = []
        super().restore_from_path(path, *args, **kwargs)
        replay_dir = Path(path) / REPLAY_DIR
        if kwargs.get("component") is None and replay_dir.is_dir() and self.local_replay_buffer is not None:
            self.local_replay_buffer.load(replay_dir)


class CovrSACConfig(SACConfig):
    """``SACConfig`` whose algorithm is :class:`CovrSAC`, plus ``overlap_sampling`` (``ray.overlap_sampling``:
    remote env runners sample the next fragment while the learner updates; see
    :mod:`covr_ray.rl.training_step`)."""

    def __init__(self, algo_class: Optional[type] = None) -> None:
        super().__init__(algo_class=algo_class or CovrSAC)
        self.overlap_sampling = False

    def covr(self, *, overlap_sampling: bool) -> "CovrSACConfig":
        """Set COVR's own iteration settings (in place, like RLlib's config methods); returns ``self``."""
        self.overlap_sampling = bool(overlap_sampling)
        return self


def prior_columns_connector(input_observation_space: Any = None, input_action_space: Any = None) -> List[Any]:
    """No learner-connector pieces. Kept because the config pickled in algorithm checkpoints written while
    COVR also had an episode sample path names this factory (it built a connector turning step infos
    into prior columns); :func:`restore_algorithm` unpickles that config. New configs do not use it."""
    return []


def training_intensity(updates_per_step: float, batch_size: int, num_env_runners: int) -> float:
    """RLlib's ``training_intensity`` giving ``updates_per_step`` updates per sampled agent step.

    RLlib divides by ``rollout_fragment_length * num_envs * (num_env_runners + 1)`` sampled steps per
    iteration, counting the local runner even when it does not sample (``num_env_runners > 0``).
    """
    return updates_per_step * batch_size * max(num_env_runners, 1) / (num_env_runners + 1)


def module_config(cfg: CovrConfig) -> Dict[str, Any]:
    """model_config of :class:`PixelSACModule` from the ``sac`` section."""
    s = cfg.sac
    return {"feature_dim": s.feature_dim, "hidden_dim": s.hidden_dim, "num_filters": s.num_filters,
            "num_conv_layers": 4, "augmentation_pad": s.augmentation_pad if s.base == "rad" else 0,
            "init_alpha": s.init_alpha, "warmup_steps": s.learning_starts}


def learner_uses_gpu(cfg: CovrConfig) -> bool:
    """GPU for the learner: ``ray.num_gpus_learner > 0`` and ``device`` cuda (or auto with CUDA present)."""
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", cfg.device, "cpu or auto on a machine without CUDA")
    return cfg.ray.num_gpus_learner > 0 and (cfg.device == "cuda"
                                             or (cfg.device == "auto" and torch.cuda.is_available()))


def learner_threads(cfg: CovrConfig, cpus: Optional[int] = None) -> Optional[int]:
    """Torch intra-op threads for the learner (``ray.learner_threads``); None: leave torch's default.

    Unset, with a local Ray (``ray.address`` None) and the learner on the CPU: ``cpus`` (default: the CPUs
    this process may run on) less the CPUs reserved by the env runners and, with the prior on, the prior
    replicas and the LoRA trainer, rounded down, at least 1. The learner shares the machine with those
    actors; more threads than free cores make each update wait on descheduled threads (measured on the
    2-core box, loaded by a second run: 2.5 s an update with 2 threads, 0.2 s with 1).
    """
    r = cfg.ray
    if r.learner_threads is not None:
        return int(r.learner_threads)
    if r.address is not None or learner_uses_gpu(cfg):
        return None
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    reserved = r.num_env_runners * r.num_cpus_per_env_runner
    if cfg.prior.enabled:
        reserved += r.prior_replicas * r.num_cpus_prior + r.num_cpus_lora
    return max(1, int(cpus - reserved))


def build_algorithm_config(cfg: CovrConfig, env: Any = None, env_config: Optional[Dict[str, Any]] = None,
                           prior_weight: Optional[float] = None,
                           run_context: Optional[Dict[str, Any]] = None) -> SACConfig:
    """RLlib ``SACConfig`` (a :class:`CovrSACConfig`) for this run.

    Args:
        cfg: the validated run config (sections ``sac``, ``env``, ``ray``, ``prior``, ``schedule``).
        env: an RLlib env (registered id or gymnasium.Env class) instead of the run's env (tests, benches);
            None = the run's env through ``covr_envs.rllib.configure_env_runners``.
        env_config: passed to the env creator with an explicit ``env``.
        run_context: the run's context for its env runners (``covr train``: config dict, run id, D_f
            recorder settings; see :mod:`covr_ray.loop.env_factory`); with the run's env only.
        prior_weight: starting lambda; None = :func:`covr_ray.loop.schedule.prior_weight` before any round.
    """
    s, r = cfg.sac, cfg.ray
    lam0 = (schedule_prior_weight(cfg, guidance_on=cfg.schedule.cold_start_rounds == 0) if prior_weight is None
            else check_prior_weight(prior_weight))
    use_gpu = learner_uses_gpu(cfg)
    config = (
        CovrSACConfig()
        .framework("torch")
        .environment(normalize_actions=True, clip_actions=False)
        .env_runners(rollout_fragment_length=s.rollout_fragment_length, batch_mode="truncate_episodes")
        .learners(num_learners=0, num_gpus_per_learner=r.num_gpus_learner if use_gpu else 0,
                  learner_class=CovrSACLearner,
                  learner_config_dict={"alpha_beta": s.alpha_beta, "encoder_tau": s.encoder_tau,
                                       "target_update_every": s.target_update_every, "prior_weight": lam0,
                                       "prior_action_source": s.prior_action_source,
                                       "prior_gate": s.prior_gate,
                                       "critic_loss": s.critic_loss})
        .rl_module(rl_module_spec=RLModuleSpec(module_class=PixelSACModule, model_config=module_config(cfg)))
        .training(gamma=s.gamma, actor_lr=s.actor_lr, critic_lr=s.critic_lr, alpha_lr=s.alpha_lr,
                  initial_alpha=s.init_alpha, tau=s.tau, twin_q=True, n_step=1, target_entropy="auto",
                  train_batch_size_per_learner=s.batch_size,
                  num_steps_sampled_before_learning_starts=s.learning_starts,
                  training_intensity=training_intensity(s.updates_per_step, s.batch_size, r.num_env_runners),
                  replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": s.buffer_capacity,
                                        "frame_stack": cfg.env.frame_stack},
                  store_buffer_in_checkpoints=False)
        .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=0)
        .debugging(seed=cfg.seed, log_sys_usage=False)
        .covr(overlap_sampling=r.overlap_sampling)
    )
    if env is None:  # the run's env through covr_envs: env id, env_config with seeds, runners, fault tolerance
        return configure_env_runners(config, cfg, run_context=run_context)
    if run_context is not None:
        raise ConfigError("run_context", "...", "None with an explicit env (the run context wraps the run's env)")
    config.environment(env=env, env_config=env_config or {})
    return apply_ray_section(config, cfg)


# --- signals for the loop -----------------------------------------------------------------------------

def _foreach_learner(algo: Any, func: Any, timeout_s: float) -> List[Any]:
    results = algo.learner_group.foreach_learner(func, timeout_seconds=timeout_s)
    values = []
    for res in results:
        if not res.ok:
            raise LearnerError(f"learner call failed: {res.get()!r}")
        values.append(res.get())
    if not values:
        raise LearnerError(f"no learner answered within {timeout_s} s")
    return values


def set_prior_weight(algo: Any, value: float, timeout_s: float = 600.0) -> float:
    """Set lambda on every learner (guidance on / off) without rebuilding anything; returns it."""
    value = check_prior_weight(value)
    _foreach_learner(algo, lambda learner: learner.set_prior_weight(value), timeout_s)
    return value


def set_prior_age_limit(algo: Any, serving_version: int, max_age: Optional[int]) -> None:
    """Age the replay's priors for the adapter now serving (``serving_version``, -1 = base model): a prior
    answered by version v is sampled with mask 0 when ``max(s, 0) - max(v, 0) > max_age``; None = never
    aged (``prior.max_age_versions``). The replay lives in the driver; a limit set before its first
    data is kept and applied when it is created. Raises ReplayError for a bad version or age."""
    replay_buffer(algo).set_prior_age_limit(serving_version, max_age)


def num_updates(algo: Any, timeout_s: float = 600.0) -> int:
    """Gradient updates the (first) learner has run since it was built or restored."""
    return int(_foreach_learner(algo, lambda learner: learner.num_updates, timeout_s)[0])


def get_prior_weight(algo: Any, timeout_s: float = 600.0) -> float:
    return float(_foreach_learner(algo, lambda learner: learner.get_prior_weight(), timeout_s)[0])


def policy_state_dict(algo: Any, timeout_s: float = 600.0) -> Dict[str, np.ndarray]:
    """Current weights of the deployable policy (``encoder.*``, ``actor.*``) for eval and export;
    load with :func:`covr_ray.rl.networks.build_policy`."""
    return _foreach_learner(algo, lambda learner: learner.policy_state(MODULE_ID), timeout_s)[0]


def network_spec_for(algo: Any) -> NetworkSpec:
    """Shapes of the run's networks (store beside exported weights)."""
    spec = algo.config.get_rl_module_spec()
    obs_space, act_space = spec.observation_space, spec.action_space
    if obs_space is None:
        module = algo.get_module(MODULE_ID)
        obs_space, act_space = module.observation_space, module.action_space
    return network_spec(obs_space, act_space, spec.model_config)


def q_values(algo: Any, obs: np.ndarray, actions: np.ndarray, timeout_s: float = 600.0) -> np.ndarray:
    """``min(Q1, Q2)`` for ``obs: (N, C, H, W)`` uint8 and ``actions: (N, A)`` -> ``(N,)`` (EDDF ablation)."""
    return _foreach_learner(algo, lambda learner: learner.q_values(obs, actions, MODULE_ID), timeout_s)[0]


def state_values(algo: Any, obs: np.ndarray, timeout_s: float = 600.0) -> np.ndarray:
    """``V(o) = min(Q1, Q2)(o, tanh(mean(o)))`` for ``obs: (N, C, H, W)`` uint8 -> ``(N,)`` (bootstraps the
    return-to-go of time-limit-truncated D_f episodes)."""
    return _foreach_learner(algo, lambda learner: learner.state_values(obs, MODULE_ID), timeout_s)[0]


def _peek(value: Any) -> Optional[float]:
    if hasattr(value, "peek"):
        value = value.peek()
    try:
        out = float(np.asarray(value).mean())
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


#: RLlib result path -> namespaced metric name.
METRIC_PATHS = {
    ("learners", MODULE_ID, "critic_loss"): "learner/critic_loss",
    ("learners", MODULE_ID, "policy_loss"): "learner/actor_loss",
    ("learners", MODULE_ID, "alpha_loss"): "learner/alpha_loss",
    ("learners", MODULE_ID, "alpha_value"): "learner/alpha",
    ("learners", MODULE_ID, "entropy"): "learner/entropy",
    ("learners", MODULE_ID, "qf_mean"): "learner/q_mean",
    ("learners", MODULE_ID, "td_error_mean"): "learner/td_error",
    ("learners", MODULE_ID, "prior_loss"): "learner/prior_loss",
    ("learners", MODULE_ID, "prior_weight"): "learner/prior_weight",
    ("learners", MODULE_ID, "prior_coverage"): "learner/prior_coverage",
    ("learners", MODULE_ID, "prior_gate_pass"): "learner/prior_gate_pass",
    ("learners", MODULE_ID, "num_module_steps_trained_lifetime"): "learner/samples_trained",
    ("env_runners", "episode_return_mean"): "rollout/episode_return_mean",
    ("env_runners", "episode_len_mean"): "rollout/episode_len_mean",
    ("env_runners", "num_env_steps_sampled_lifetime"): "rollout/agent_steps",
    ("replay_buffer", "size"): "replay/size",
    ("replay_buffer", "prior_coverage"): "replay/prior_coverage",
    ("replay_buffer", "usable_prior_coverage"): "replay/usable_prior_coverage",
    ("replay_buffer", "priors_added"): "replay/priors_added",
    ("replay_buffer", "stale_priors_masked"): "replay/stale_priors_masked",
    ("replay_buffer", "late_priors_attached"): "replay/late_priors_attached",
    ("replay_buffer", "late_priors_missed"): "replay/late_priors_missed",
    ("replay_buffer", "bytes"): "replay/bytes",
}


#: env-runner metric prefixes passed to the sink as they are (counters of the run's own callbacks), with the
#: namespace they get there.
ENV_RUNNER_PREFIXES = {"covr_df/": "df/", "prior_client/": "prior_client/"}


def learner_metrics(results: Dict[str, Any]) -> Dict[str, float]:
    """Namespaced scalars from an ``algo.train()`` result (only those present): :data:`METRIC_PATHS`, and
    the env runners' ``covr_df/*`` (D_f recorder) and ``prior_client/*`` (prior wrappers) counters."""
    out: Dict[str, float] = {}
    runners = results.get("env_runners") if isinstance(results, dict) else None
    for key, node in (runners.items() if isinstance(runners, dict) else ()):
        for prefix, namespace in ENV_RUNNER_PREFIXES.items():
            if isinstance(key, str) and key.startswith(prefix):
                value = _peek(node)
                if value is not None:
                    out[namespace + key[len(prefix):]] = value
    steps, with_prior = out.get("prior_client/steps"), out.get("prior_client/with_prior")
    if steps:
        out["prior_client/with_prior_frac"] = (with_prior or 0.0) / steps
    for path, name in METRIC_PATHS.items():
        value = result_value(results, *path)
        if value is not None:
            out[name] = value
    return out


def result_value(results: Any, *path: str) -> Optional[float]:
    """The finite scalar at ``path`` of an ``algo.train()`` result (RLlib stats objects peeked, arrays
    averaged), or None when the path is absent or holds no finite number."""
    node: Any = results
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
    return _peek(node)


def replay_buffer(algo: Any) -> CovrEpisodeReplayBuffer:
    buf = algo.local_replay_buffer
    if not isinstance(buf, CovrEpisodeReplayBuffer):
        raise LearnerError(f"algorithm has no CovrEpisodeReplayBuffer (got {type(buf).__name__}); "
                           "build it with build_algorithm_config")
    return buf


def save_checkpoint(algo: Any, path: Union[str, os.PathLike]) -> Path:
    """Checkpoint to a fresh directory ``path``: RLlib state + replay, written to a temp dir and renamed,
    so ``path`` is complete or absent."""
    from covr_ray.io import atomic_directory

    path = Path(path)
    if path.exists():
        raise CheckpointError(f"checkpoint directory {path} already exists; checkpoints are never overwritten")
    with atomic_directory(path) as tmp:
        algo.save_to_path(str(tmp))
    return path


def restore_algorithm(path: Union[str, os.PathLike]) -> CovrSAC:
    """Rebuild the algorithm from :func:`save_checkpoint` output (weights, optimizers, lambda, replay)."""
    path = Path(path)
    if not (path / "rllib_checkpoint.json").is_file():
        raise CheckpointError(f"{path} is not an algorithm checkpoint (no rllib_checkpoint.json)")
    return CovrSAC.from_checkpoint(str(path))


def restore_checkpoint(algo: CovrSAC, path: Union[str, os.PathLike]) -> CovrSAC:
    """Restore :func:`save_checkpoint` output into ``algo``, an algorithm built from the run's own config
    (weights, optimizers, lambda, connector states, counters, replay). Unlike :func:`restore_algorithm`,
    the env runners keep ``algo``'s env_config (this run's prior service, D_f directory), not the one
    pickled in the checkpoint by an earlier driver."""
    path = Path(path)
    if not (path / "rllib_checkpoint.json").is_file():
        raise CheckpointError(f"{path} is not an algorithm checkpoint (no rllib_checkpoint.json)")
    algo.restore_from_path(str(path))
    return algo


__all__ = ["CovrSAC", "CovrSACConfig", "build_algorithm_config", "set_prior_weight", "set_prior_age_limit",
           "get_prior_weight", "num_updates", "policy_state_dict", "network_spec_for", "q_values", "state_values",
           "learner_metrics", "result_value", "replay_buffer", "save_checkpoint", "restore_algorithm",
           "restore_checkpoint", "training_intensity"]
