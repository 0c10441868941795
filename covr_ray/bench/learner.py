"""``covr bench learner``: SAC updates per second through RLlib, and the same update in plain PyTorch.

Both paths run in this process on the same networks (the plain trainer copies the RLlib module's
weights) and draw batches of the same size from the same compact replay, filled with synthetic
frame-stacked episodes (random pixels: speed does not depend on the content):

- RLlib (what ``CovrSAC``'s training step runs): ``replay.sample`` arrays -> ``MultiAgentBatch``
  (:func:`covr_ray.rl.training_step.columns_batch`) -> ``Learner.update`` (tensors, module forward,
  SAC + COVR losses, three backward passes, Adam steps, metrics);
- plain: ``replay.sample`` arrays -> tensors -> :class:`covr_ray.rl.plain.PlainPixelSAC.update`.

``rllib_over_plain`` = time per RLlib update / time per plain update (1.0 = no overhead); both are
medians of interleaved calls, so a change of machine load hits both paths alike.

``--paths plain`` measures the plain reference learner alone (:func:`covr_ray.rl.plain_train.build_trainer`,
the single-process trainer's networks and hyperparameters) and imports no Ray (nor gymnasium when
``--action-dim`` is given): it runs on a GPU machine that has PyTorch only. Its batches come from a
:class:`~covr_ray.rl.replay.PixelReplay` of synthetic episodes, sampled on the CPU and copied to the device
per update as :class:`~covr_ray.rl.plain_train.PlainLoop` does, into the replay's reused buffers
(``updates_per_s``); into fresh arrays (``fresh_buffers_updates_per_s``, ``reuse_over_fresh`` the speed-up);
``resident_updates_per_s`` repeats the update on one batch already on the device (the update's own ceiling,
no sampling or copy). The three are interleaved.

How to run::

    covr bench learner --json                          # dmc-cartpole-swingup preset, batch 64, 84x84
    covr bench learner --json --batch-size 256 --device cuda --updates 50
    covr bench learner --json --paths plain --batch-size 512 --device cuda --updates 50   # no Ray needed

Prints one JSON object: ``updates_per_s``, ``batch_size``, ``obs_shape``, ``device``, ``plain_updates_per_s``,
``rllib_over_plain`` plus the base, threads, parameter count and the replay's bytes per stored step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="dmc-cartpole-swingup", help="preset giving the sac section")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override (repeatable)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per update")
    parser.add_argument("--image-size", type=int, default=84, help="observation height and width")
    parser.add_argument("--action-dim", type=int, default=None, help="action size; default: the preset env's")
    parser.add_argument("--updates", type=int, default=10, help="timed updates per path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates per path first")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--paths", choices=["both", "plain"], default="both",
                        help="both: RLlib and plain, interleaved; plain: the plain reference learner alone "
                             "(no Ray import; no gymnasium either with --action-dim)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")


def _timed(fns: list[Callable[[], Any]], n: int, sync: Callable[[], None]) -> list[float]:
    """Median seconds per call of each function, calls interleaved so load changes hit all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for fn, out in zip(fns, times):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _fill_replay(buf: Any, obs_shape: tuple[int, int, int], frame_stack: int, action_dim: int, steps: int,
                 seed: int) -> None:
    """Synthetic frame-stacked episodes of 125 steps, a prior on every 2nd step."""
    import gymnasium as gym
    import numpy as np
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    from covr_ray.columns import INFO_PRIOR_ACTION, INFO_PRIOR_MASK, INFO_STEP_ID

    rng = np.random.default_rng(seed)
    c = obs_shape[0] // frame_stack
    obs_space = gym.spaces.Box(0, 255, obs_shape, np.uint8)
    act_space = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
    step_id, length = 0, 125
    while len(buf) < steps:
        frames = rng.integers(0, 256, (length + frame_stack, c) + obs_shape[1:], dtype=np.uint8)
        obs = [frames[t:t + frame_stack].reshape(obs_shape) for t in range(length + 1)]
        infos: list[dict] = [{}]
        for t in range(length):
            prior = t % 2 == 0
            infos.append({INFO_STEP_ID: step_id, INFO_PRIOR_MASK: 1.0 if prior else 0.0,
                          INFO_PRIOR_ACTION: rng.uniform(-1, 1, action_dim).tolist()})
            step_id += 1
        buf.add([SingleAgentEpisode(observations=obs, infos=infos,
                                    actions=list(rng.uniform(-1, 1, (length, action_dim)).astype(np.float32)),
                                    rewards=list(rng.normal(size=length)), truncated=True, len_lookback_buffer=0,
                                    observation_space=obs_space, action_space=act_space)])


def _check_and_set(device: str, threads: int | None, minimums: tuple[tuple[str, int, int], ...]) -> bool:
    """Both benches' argument checks (each ``(flag, value, lowest allowed)``; ConfigError naming the flag) and
    torch's thread count; returns whether the learner runs on CUDA."""
    import torch

    from covr_ray.errors import ConfigError

    if threads is not None:
        torch.set_num_threads(threads)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("--device", device, "cpu or auto on a machine without CUDA")
    for name, value, lo in minimums:
        if value < lo:
            raise ConfigError(name, value, f"an integer >= {lo}")
    return use_cuda


def run_bench(preset: str = "dmc-cartpole-swingup", overrides: list[str] | None = None, batch_size: int = 64,
              image_size: int = 84, action_dim: int | None = None, updates: int = 10, warmup: int = 2,
              device: str = "auto", threads: int | None = None) -> Dict[str, Any]:
    """Measure both paths (RLlib and plain PyTorch); returns the figures (see the module docstring)."""
    import gymnasium as gym
    import numpy as np
    import torch

    from covr_ray.config import load_config
    from covr_ray.rl.algo import MODULE_ID, build_algorithm_config
    from covr_ray.rl.networks import count_parameters
    from covr_ray.rl.plain import PlainPixelSAC
    from covr_ray.rl.rllib_replay import CovrEpisodeReplayBuffer
    from covr_ray.rl.training_step import columns_batch

    use_cuda = _check_and_set(device, threads, (("--updates", updates, 1), ("--warmup", warmup, 0),
                                                 ("--batch-size", batch_size, 1)))
    cfg = load_config(preset, overrides=list(overrides or []) + [
        f"sac.batch_size={batch_size}", f"env.image_size={image_size}", "schedule.cold_start_rounds=0",
        f"sac.buffer_capacity={max(4 * batch_size, 1000)}"])
    if action_dim is None:
        from covr_envs.registry import resolve_env_spec

        action_dim = resolve_env_spec(cfg.env).action_dim
    obs_shape = (3 * cfg.env.frame_stack, image_size, image_size)
    obs_space = gym.spaces.Box(0, 255, obs_shape, np.uint8)
    act_space = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)

    config = build_algorithm_config(cfg, env="covr-bench-no-env", env_config={})
    config.learners(num_gpus_per_learner=1 if use_cuda else 0).debugging(seed=None)
    torch.manual_seed(cfg.seed)
    learner = config.build_learner(spaces={MODULE_ID: (obs_space, act_space)})
    module = learner.module[MODULE_ID]
    dev = next(module.parameters()).device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    buf = CovrEpisodeReplayBuffer(cfg.sac.buffer_capacity, frame_stack=cfg.env.frame_stack, seed=cfg.seed)
    _fill_replay(buf, obs_shape, cfg.env.frame_stack, action_dim, min(cfg.sac.buffer_capacity, 4 * batch_size),
                 cfg.seed)
    timesteps = {"num_env_steps_sampled_lifetime": cfg.sac.learning_starts + 1}

    def rllib_update() -> None:
        learner.update(batch=columns_batch(buf.sample(batch_size), MODULE_ID), timesteps=timesteps)

    s = cfg.sac
    plain = PlainPixelSAC.from_module(module, gamma=s.gamma, actor_lr=s.actor_lr, critic_lr=s.critic_lr,
                                      alpha_lr=s.alpha_lr, alpha_beta=s.alpha_beta, tau=s.tau,
                                      encoder_tau=s.encoder_tau, target_update_every=s.target_update_every,
                                      prior_weight=s.lam, prior_action_source=s.prior_action_source,
                                      critic_loss=s.critic_loss, prior_gate=s.prior_gate, device=dev)
    learner.set_prior_weight(s.lam)

    def plain_update() -> None:
        arrays = buf.sample(batch_size)
        plain.update({k: torch.as_tensor(v).to(dev, non_blocking=True) for k, v in arrays.items()})

    paths = [rllib_update, plain_update]
    for fn in paths:
        for _ in range(warmup):
            fn()
    rllib_s, plain_s = _timed(paths, updates, sync)
    return {
        "updates_per_s": round(1.0 / rllib_s, 3),
        "batch_size": batch_size,
        "obs_shape": list(obs_shape),
        "device": str(dev),
        "plain_updates_per_s": round(1.0 / plain_s, 3),
        "rllib_over_plain": round(rllib_s / plain_s, 3),
        "base": cfg.sac.base,
        "action_dim": action_dim,
        "threads": torch.get_num_threads(),
        "parameters": count_parameters([module.encoder, module.actor, module.critic]),
        "replay_bytes_per_step": round(buf.core.nbytes() / max(1, len(buf)), 1),
        "updates_timed": updates,
    }


def _fill_pixel_replay(replay: Any, obs_shape: tuple[int, int, int], frame_stack: int, action_dim: int,
                       steps: int, seed: int) -> None:
    """Synthetic frame-stacked episodes of 125 steps into a :class:`PixelReplay`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c, length, episode = obs_shape[0] // frame_stack, 125, 0
    while len(replay) < steps:
        frames = rng.integers(0, 256, (length + frame_stack, c) + obs_shape[1:], dtype=np.uint8)
        obs = np.stack([frames[t:t + frame_stack].reshape(obs_shape) for t in range(length + 1)])
        replay.add_chunk(episode, obs, rng.uniform(-1, 1, (length, action_dim)), rng.normal(size=length),
                         terminated=False, truncated=True)
        replay.end_episode(episode)
        episode += 1


def run_plain_bench(preset: str = "dmc-cartpole-swingup", overrides: list[str] | None = None, batch_size: int = 64,
                    image_size: int = 84, action_dim: int | None = None, updates: int = 10, warmup: int = 2,
                    device: str = "auto", threads: int | None = None) -> Dict[str, Any]:
    """The plain reference learner alone, no Ray or gymnasium (see the module docstring)."""
    import torch

    from covr_ray.config import load_config
    from covr_ray.rl.networks import count_parameters
    from covr_ray.rl.plain_train import _to_device, build_trainer
    from covr_ray.rl.replay import PixelReplay

    use_cuda = _check_and_set(device, threads, (("--updates", updates, 1), ("--warmup", warmup, 0),
                                                 ("--batch-size", batch_size, 1),
                                                 ("--action-dim", 1 if action_dim is None else action_dim, 1)))
    cfg = load_config(preset, overrides=list(overrides or []) + [
        f"sac.batch_size={batch_size}", f"env.image_size={image_size}"])
    if action_dim is None:
        from covr_envs.registry import resolve_env_spec

        action_dim = resolve_env_spec(cfg.env).action_dim
    obs_shape = (3 * cfg.env.frame_stack, image_size, image_size)
    torch.manual_seed(cfg.seed)
    trainer, _spec = build_trainer(cfg, obs_shape, action_dim, "cuda" if use_cuda else "cpu")
    dev = trainer.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    capacity = max(4 * batch_size, 1000)
    replay = PixelReplay(capacity, obs_shape, action_dim, frame_stack=cfg.env.frame_stack, seed=cfg.seed)
    _fill_pixel_replay(replay, obs_shape, cfg.env.frame_stack, action_dim, capacity, cfg.seed)
    resident = _to_device(replay.sample(batch_size), dev)

    def sampled_update() -> None:  # as PlainLoop and the training step: the replay's buffers reused
        trainer.update(_to_device(replay.sample(batch_size, reuse_buffers=True), dev))

    def fresh_update() -> None:
        trainer.update(_to_device(replay.sample(batch_size), dev))

    def resident_update() -> None:
        trainer.update(resident)

    paths = [sampled_update, fresh_update, resident_update]
    for fn in paths:
        for _ in range(warmup):
            fn()
    sampled_s, fresh_s, resident_s = _timed(paths, updates, sync)
    return {
        "updates_per_s": round(1.0 / sampled_s, 3),
        "fresh_buffers_updates_per_s": round(1.0 / fresh_s, 3),
        "reuse_over_fresh": round(fresh_s / sampled_s, 3),
        "resident_updates_per_s": round(1.0 / resident_s, 3),
        "batch_size": batch_size,
        "obs_shape": list(obs_shape),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "paths": "plain",
        "base": cfg.sac.base,
        "hidden_dim": cfg.sac.hidden_dim,
        "action_dim": action_dim,
        "threads": torch.get_num_threads(),
        "parameters": count_parameters([trainer.encoder, trainer.actor, trainer.critic]),
        "updates_timed": updates,
        "torch": torch.__version__,
    }


def run(args: argparse.Namespace) -> int:
    from covr_ray.bench import print_figures

    if args.paths == "plain":
        figures = run_plain_bench(args.preset, args.overrides, args.batch_size, args.image_size,
                                  args.action_dim, args.updates, args.warmup, args.device, args.threads)
        print_figures(figures, args.json)
        return 0
    figures = run_bench(args.preset, args.overrides, args.batch_size, args.image_size, args.action_dim,
                        args.updates, args.warmup, args.device, args.threads)
    print_figures(figures, args.json)
    return 0
