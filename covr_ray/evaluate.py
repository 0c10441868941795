"""Evaluation: run an actor on a run's env for N episodes and summarise (paper: 10 episodes, policy only).

The actor is any callable ``act(frame, obs) -> action`` (:data:`ActFn`), so the same loop evaluates the
policy network (:func:`policy_act_fn`, deterministic ``tanh(mean)``, no VLM, no Ray) and the VLM alone as
a policy (:class:`covr_ray.vlm.policy.VLMPolicy`, ``covr eval --actor vlm``: the prior service's backend
asked about ``frame``) and the baselines a learning curve must rise above (:func:`evaluate_baseline`,
``covr eval --actor random`` / ``--actor constant --action A``).

The orchestrator calls::

    from covr_ray.evaluate import evaluate_policy, eval_metrics, write_eval_result
    result = evaluate_policy(policy, cfg.env, episodes=cfg.schedule.eval_episodes, seed=eval_seed(cfg))
    result["env_steps"] = env_steps                       # training env steps of this policy
    sink.log(eval_metrics(result), step=env_steps)        # eval/return_mean, eval/distance_m_mean, ...
    write_eval_result(run_dir, result)                    # RunDir(run_dir).eval_result(env_steps)

``covr eval RUN_DIR`` does the same from the run's policy artifact and config (:func:`evaluate_run`). Every
path comes from :class:`covr_ray.run_dir.RunDir`.

Result dict (JSON-serialisable): ``env``, ``actor``, ``episodes``, ``seed``, ``returns`` / ``return_mean`` /
``return_std``, ``lengths`` / ``length_mean`` / ``length_std`` (agent steps), ``episode_env_steps``
(simulator steps, action repeat counted), ``wall_s``; for envs that report ``info["distance_m"]``
(driving): ``distances_m`` / ``distance_m_mean`` / ``distance_m_std`` (metres). Standard deviations are
population ones (ddof 0) over episodes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch

from covr_ray.errors import CheckpointError, ConfigError, EnvError
from covr_ray.io import atomic_write_text
from covr_ray.log import get_logger
from covr_ray.run_dir import RunDir

if TYPE_CHECKING:  # pragma: no cover
    from covr_ray.config import CovrConfig, EnvSection
    from covr_ray.rl.networks import PixelPolicy

log = get_logger(__name__)

ActFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``act(frame: (S, S, 3) uint8, obs: (3 * frame_stack, S, S) uint8) -> action (A,) float32 in [-1, 1]``.
``frame`` is the newest RGB frame (what the VLM sees), ``obs`` the stacked observation (what the policy
sees)."""

EVAL_SEED_OFFSET = 100_000
"""Default eval seed = run seed + this, so evaluation episodes are not the training episodes."""
MAX_EPISODES = 10_000


def eval_seed(cfg: "CovrConfig") -> int:
    """Default seed of a run's evaluation episodes (episode ``i`` resets with ``eval_seed + i``)."""
    return (int(cfg.seed) + EVAL_SEED_OFFSET) % 2**32


def policy_act_fn(policy: "PixelPolicy", device: str | torch.device = "cpu") -> ActFn:
    """Wrap the policy network as an :data:`ActFn`: deterministic action from ``obs``; ``frame`` unused."""
    policy = policy.to(device).eval()

    def act(frame: np.ndarray, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(obs)).unsqueeze(0).to(device)
            return policy(x)[0].cpu().numpy().astype(np.float32)

    return act


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def check_episodes_seed(episodes: Any, seed: Any) -> None:
    """Refuse a bad ``--episodes`` (an integer in 1..MAX_EPISODES) or ``--seed`` (0 <= seed < 2**32) with
    ConfigError; callers that load a model first check here before loading it."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or not 1 <= episodes <= MAX_EPISODES:
        raise ConfigError("--episodes", episodes, f"an integer in 1..{MAX_EPISODES}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError("--seed", seed, "an integer 0 <= seed < 2**32")


def run_episodes(act: ActFn, env_cfg: "EnvSection", episodes: int, seed: int, *,
                 actor_name: str = "policy", record_first_episode: bool = False,
                 on_episode_start: Optional[Callable[[int], None]] = None,
                 ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Run ``episodes`` episodes of ``env_cfg``'s env with ``act``; return ``(result, frames)``.

    Episode ``i`` starts with ``reset(seed=seed + i)``, so the same seed gives the same episodes.

    Args:
        act: the actor, see :data:`ActFn`.
        env_cfg: the run's env section (``cfg.env``).
        episodes: number of episodes, >= 1.
        seed: base seed, 0 <= seed < 2**32.
        actor_name: stored as ``result["actor"]`` (``policy``, ``vlm``).
        record_first_episode: keep the first episode's rendered frames (``(S, S, 3) uint8`` each, the
            reset frame first) for a video; otherwise ``frames`` is empty.
        on_episode_start: called with the episode index after each reset, before the episode's first
            ``act`` (an actor with memory across steps forgets the previous episode there).

    Raises:
        ConfigError: bad ``episodes`` or ``seed``.
        EnvError: ``act`` returned an action of the wrong shape or a non-finite one.
    """
    from covr_envs.registry import load_env_spec, make_env_from_config

    check_episodes_seed(episodes, seed)
    spec = load_env_spec(env_cfg)  # imports env.imports first
    reports_distance = "distance_m" in spec.info_keys
    env = make_env_from_config(env_cfg, seed)
    action_shape = tuple(env.action_space.shape)
    returns, lengths, env_steps, distances = [], [], [], []
    frames: list[np.ndarray] = []
    start = time.perf_counter()
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=(seed + episode) % 2**32)
            if on_episode_start is not None:
                on_episode_start(episode)
            record = record_first_episode and episode == 0
            frame = env.render()
            if record:
                frames.append(frame)
            total, steps, sim_steps, done = 0.0, 0, 0, False
            while not done:
                action = np.asarray(act(frame, obs), dtype=np.float32)
                if action.shape != action_shape or not np.all(np.isfinite(action)):
                    raise EnvError(f"{actor_name} actor returned action {action.tolist()} of shape {action.shape}; "
                                   f"{env_cfg.name} needs a finite array of shape {action_shape} in [-1, 1]")
                obs, reward, terminated, truncated, info = env.step(action)
                frame = env.render()
                if record:
                    frames.append(frame)
                total += float(reward)
                steps += 1
                sim_steps += int(info.get("env_steps", 1))
                done = bool(terminated or truncated)
            returns.append(total)
            lengths.append(steps)
            env_steps.append(sim_steps)
            if reports_distance:
                distances.append(float(info["distance_m"]))
    finally:
        env.close()
    result: dict[str, Any] = {"env": env_cfg.name, "actor": actor_name, "episodes": episodes, "seed": seed,
                              "returns": returns, "lengths": lengths, "episode_env_steps": env_steps}
    result["return_mean"], result["return_std"] = _mean_std(returns)
    result["length_mean"], result["length_std"] = _mean_std(lengths)
    if reports_distance:
        result["distances_m"] = distances
        result["distance_m_mean"], result["distance_m_std"] = _mean_std(distances)
    result["wall_s"] = round(time.perf_counter() - start, 3)
    return result, frames


def run_episodes_with_video(act: ActFn, env_cfg: "EnvSection", episodes: int, seed: int, *,
                            actor_name: str, video_path: Optional[str | Path] = None, fps: float = 15.0,
                            on_episode_start: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """:func:`run_episodes`, and with ``video_path`` (``.mp4`` or ``.gif``) its first episode written there
    (``result["video"]``): the one path every actor's evaluation takes (policy, VLM, random)."""
    result, frames = run_episodes(act, env_cfg, episodes, seed, actor_name=actor_name,
                                  record_first_episode=video_path is not None, on_episode_start=on_episode_start)
    if video_path is not None:
        from covr_ray.video import write_video

        result["video"] = str(write_video(frames, video_path, fps=fps))
    return result


def random_act_fn(action_dim: int, seed: int) -> ActFn:
    """Uniform actions in [-1, 1]^A from a seeded generator: the random-policy level a learning curve must
    rise above (``covr eval --actor random``)."""
    rng = np.random.default_rng(seed)

    def act(frame: np.ndarray, obs: np.ndarray) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, action_dim).astype(np.float32)

    return act


def evaluate_policy(policy: "PixelPolicy", env_cfg: "EnvSection", episodes: int, seed: int, *,
                    video_path: Optional[str | Path] = None, fps: float = 15.0) -> dict[str, Any]:
    """Evaluate the policy network alone (deterministic actions, no VLM, no Ray) on ``env_cfg``'s env.

    Args:
        policy: ``PixelPolicy``; its ``obs_shape`` must match the env's observation.
        env_cfg: the run's env section.
        episodes, seed: see :func:`run_episodes`.
        video_path: if set (``.mp4`` or ``.gif``), the first episode's frames are written there and the
            path is stored as ``result["video"]``.

    Returns:
        The result dict described in the module docstring.

    Raises:
        CheckpointError: the policy's observation shape does not match the env's.
    """
    expected = (3 * env_cfg.frame_stack, env_cfg.image_size, env_cfg.image_size)
    got = tuple(policy.encoder.obs_shape)
    if got != expected:
        raise CheckpointError(f"policy expects observations {got} but env {env_cfg.name} with frame_stack "
                              f"{env_cfg.frame_stack} and image_size {env_cfg.image_size} gives {expected}")
    return run_episodes_with_video(policy_act_fn(policy), env_cfg, episodes, seed, actor_name="policy",
                                   video_path=video_path, fps=fps)


def eval_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Namespaced scalars for the metrics sink: ``eval/return_mean``, ``eval/return_std``,
    ``eval/length_mean`` and, for driving, ``eval/distance_m_mean`` / ``eval/distance_m_std``."""
    keys = ("return_mean", "return_std", "length_mean", "distance_m_mean", "distance_m_std")
    return {f"eval/{k}": float(result[k]) for k in keys if k in result}


def write_result(path: Path, result: dict[str, Any]) -> Path:
    """Write an evaluation ``result`` to ``path`` as JSON, atomically, after checking its summary numbers
    are finite: the one writer of every eval result (policy, VLM, random).

    Raises:
        ConfigError: a non-finite ``return_mean`` / ``return_std`` / ``distance_m_mean`` / ``distance_m_std``.
    """
    for key in ("return_mean", "return_std", "distance_m_mean", "distance_m_std"):
        if key in result and not math.isfinite(float(result[key])):
            raise ConfigError(f"result.{key}", result[key], "a finite number")
    atomic_write_text(path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path


def write_eval_result(run_dir: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` (which must hold ``env_steps``) to :meth:`RunDir.eval_result`, atomically.

    Raises:
        ConfigError: ``result`` lacks ``env_steps`` or holds a non-finite number.
    """
    steps = result.get("env_steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError("result.env_steps", steps, "an integer >= 0 (training env steps of the policy)")
    return write_result(RunDir(Path(run_dir)).eval_result(steps), result)


def parse_constant_action(text: str, codec: Any, action_dim: int) -> np.ndarray:
    """``--action`` of ``covr eval --actor constant``: ``action_dim`` comma-separated numbers in [-1, 1]
    (``0,0.33``) or an answer the run's codec decodes (``keep lane, accelerate slightly``).

    Raises:
        ConfigError: neither, naming what the codec accepts.
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = np.asarray([float(p) for p in parts], dtype=np.float32)
    except ValueError:
        values = None
    if values is not None:
        if values.shape != (action_dim,) or not np.all(np.isfinite(values)) or np.abs(values).max() > 1.0:
            raise ConfigError("--action", text, f"{action_dim} comma-separated numbers in [-1, 1], or an answer "
                              f"of the {codec.name} codec")
        return values
    decoded = codec.decode(text)
    if decoded is None:
        raise ConfigError("--action", text, f"{action_dim} comma-separated numbers in [-1, 1], or an answer of "
                          f"the {codec.name} codec", hint=codec.format_instructions)
    return np.asarray(decoded, dtype=np.float32)


def evaluate_baseline(run_dir: str | Path, actor: str, episodes: int = 10, seed: Optional[int] = None, *,
                      action: Optional[str] = None, video: bool = False, video_format: str = "auto",
                      fps: float = 15.0) -> tuple[dict[str, Any], Path]:
    """``covr eval --actor random|constant``: the levels a learned policy (and the VLM as a policy) must rise
    above, on the episodes of ``covr eval`` of the policy (``seed`` defaults to :func:`eval_seed`; the loop's
    own evaluations use ``eval_seed + env_steps``, other episodes of the same distribution).

    ``random``: uniform actions (:func:`random_act_fn`), written to :meth:`RunDir.random_eval_result`.
    ``constant``: one action every step (:func:`parse_constant_action` reads ``action``; the VLM answering
    one fixed answer scores exactly this), written to :meth:`RunDir.constant_eval_result`.

    Raises:
        CheckpointError: ``run_dir`` is not a run directory. ConfigError: bad ``actor`` / ``action`` /
        ``episodes`` / ``seed``.
    """
    from covr_envs.registry import load_env_spec
    from covr_ray.prior.codecs import get_codec

    if actor not in ("random", "constant"):
        raise ConfigError("--actor", actor, "random or constant")
    if (action is None) != (actor == "random"):
        raise ConfigError("--action", action, "an action with --actor constant (and only there)")
    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    seed = eval_seed(cfg) if seed is None else seed
    check_episodes_seed(episodes, seed)
    spec = load_env_spec(cfg.env)  # no prompt needed (a gym: env without one can still be evaluated)
    action_dim = int(spec.action_dim)
    if actor == "constant":
        codec = get_codec(cfg.env.codec or spec.codec, action_dim)  # the run's codec, as the prior service's
        constant = parse_constant_action(action, codec, action_dim)
        act: ActFn = lambda frame, obs: constant  # noqa: E731
        json_path = run.constant_eval_result()
    else:
        act = random_act_fn(action_dim, seed)
        json_path = run.random_eval_result()
    video_path = None
    if video:
        from covr_ray.video import resolve_format

        video_path = json_path.with_suffix("." + resolve_format(video_format))
    result = run_episodes_with_video(act, cfg.env, episodes, seed, actor_name=actor, video_path=video_path, fps=fps)
    result.update({"preset": cfg.preset, "run_seed": int(cfg.seed)})
    if actor == "constant":
        result.update({"action": constant.tolist(), "action_text": action})
    path = write_result(json_path, result)
    log.info("eval %s: %s actions, return %.1f +- %.1f over %d episodes -> %s", run_dir, actor,
             result["return_mean"], result["return_std"], episodes, path)
    return result, path


def evaluate_run(run_dir: str | Path, episodes: int = 10, seed: Optional[int] = None, *, video: bool = False,
                 video_format: str = "auto", fps: float = 15.0) -> tuple[dict[str, Any], Path]:
    """``covr eval``: evaluate the run's policy artifact (``policy/policy.pt``) on the run's env; write the
    result JSON (:meth:`RunDir.new_eval_result`: the loop's final evaluation at the same env steps, or an
    earlier ``covr eval``, is kept, and this one goes beside it).

    The env comes from the run's ``config.yaml``; the policy's meta must agree with it. ``seed`` defaults to
    :func:`eval_seed`. With ``video``, the first episode goes to :meth:`RunDir.eval_video`.

    Returns:
        ``(result, json_path)``; ``result["env_steps"]`` is the policy's training env steps.

    Raises:
        CheckpointError: ``run_dir`` is not a run directory (no ``config.yaml``), a missing policy, or a
            policy made for another env.
        ConfigError: the run's config is invalid.
    """
    from covr_ray.policy_io import load_policy

    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    policy, meta = load_policy(run.root)
    if meta["env"] != cfg.env.name:
        raise CheckpointError(f"policy in {run_dir} was trained on {meta['env']!r} but {run.config_path.name} "
                              f"names {cfg.env.name!r}")
    steps = int(meta["env_steps"])
    json_path = run.new_eval_result(steps)  # the loop's own result at these steps (or an earlier one) is kept
    video_path = None
    if video:  # named like the JSON: eval-<steps>[.n].json -> video-<steps>[.n].<ext>
        from covr_ray.video import resolve_format

        video_path = json_path.with_name("video-" + json_path.name[len("eval-"):]).with_suffix(
            "." + resolve_format(video_format))
    result = evaluate_policy(policy, cfg.env, episodes, eval_seed(cfg) if seed is None else seed,
                             video_path=video_path, fps=fps)
    result.update({"env_steps": steps, "preset": cfg.preset, "run_seed": int(cfg.seed)})
    path = write_result(json_path, result)
    log.info("eval %s: return %.1f +- %.1f over %d episodes -> %s", run_dir, result["return_mean"],
             result["return_std"], episodes, path)
    return result, path
