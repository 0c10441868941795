"""One conformance test over every registered env (plus two bring-your-own gym envs).

Checked for each: observation and action spaces, dtypes and shapes, the single-frame render, info keys,
seeded determinism (same seed: same first frames and rewards), time-limit truncation, bad actions refused.
CARLA envs run against the fake server of support/carla_fake.py (the ``fake_carla`` fixture) behind the real
``carla`` client's value types (no server exists on these machines; without the ``carla`` wheel they are
skipped).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from covr_envs import get_env_spec, list_envs, make_env
from covr_ray.errors import EnvError

STEPS = 3
S = 64

GYM_ENVS = [
    "gym:Pendulum-v1",
    pytest.param("gym:CarRacing-v3", marks=pytest.mark.skipif(importlib.util.find_spec("Box2D") is None,
                                                            reason="Box2D not installed (dev extra)")),
]


def _make(name: str, seed: int, **kw: Any) -> gym.Env:
    if name.startswith("carla-"):
        kw["carla"] = {"num_vehicles": 3, "timeout_s": 2.0}
    return make_env(name, seed, image_size=S, **kw)


def _rollout(env: gym.Env, actions: np.ndarray) -> tuple[list[np.ndarray], list[float], list[dict], list[bool]]:
    obs, info = env.reset()
    frames, rewards, infos, ends = [obs], [], [info], []
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        frames.append(obs)
        rewards.append(reward)
        infos.append(info)
        ends.append((terminated, truncated))
        if terminated or truncated:
            break
    return frames, rewards, infos, ends


@pytest.mark.parametrize("name", list_envs() + GYM_ENVS)
def test_env_conformance(name: str, request: pytest.FixtureRequest) -> None:
    if name.startswith("carla-"):
        request.getfixturevalue("fake_carla")
    spec = get_env_spec(name)
    assert spec.name == name and spec.family in ("dmc", "driving", "carla", "gym")
    assert spec.codec == ("driving" if spec.family in ("driving", "carla") else "numeric")
    if spec.family != "gym":
        assert spec.prompt.strip() and spec.action_description.strip()
    if spec.codec == "driving":
        assert spec.action_dim == 2 and "steer" in spec.action_description

    env = _make(name, 7, max_episode_steps=STEPS)
    actions = np.random.default_rng(0).uniform(-1, 1, (STEPS, spec.action_dim)).astype(np.float32)
    try:
        assert env.observation_space == gym.spaces.Box(0, 255, (9, S, S), np.uint8)
        space = env.action_space
        assert isinstance(space, gym.spaces.Box) and space.dtype == np.float32
        assert space.shape == (spec.action_dim,)
        assert np.all(space.low == -1.0) and np.all(space.high == 1.0)

        frames, rewards, infos, ends = _rollout(env, actions)
        for obs in frames:
            assert obs.shape == (9, S, S) and obs.dtype == np.uint8
        frame = env.render()
        assert frame.shape == (S, S, 3) and frame.dtype == np.uint8
        assert np.array_equal(frame, frames[-1][6:].transpose(1, 2, 0)), "render() is the newest stacked frame"
        assert np.array_equal(frames[0][0:3], frames[0][6:9]), "reset fills the stack with the first frame"
        for info in infos:
            assert set(spec.info_keys) <= set(info), f"missing info keys {set(spec.info_keys) - set(info)}"
        for info in infos[1:]:
            assert 1 <= info["env_steps"] <= spec.default_action_repeat
        assert all(isinstance(r, float) and np.isfinite(r) for r in rewards)
        if len(ends) == STEPS and not ends[-1][0]:
            assert ends[-1] == (False, True), "max_episode_steps truncates"

        with pytest.raises(EnvError):
            env.step(np.zeros(spec.action_dim + 1, np.float32))
        with pytest.raises(EnvError):
            env.step(np.full(spec.action_dim, np.nan, np.float32))
    finally:
        env.close()

    twin = _make(name, 7, max_episode_steps=STEPS)  # after close: a CARLA scene is rebuilt in an empty world
    try:
        twin_frames, twin_rewards, _, _ = _rollout(twin, actions)
    finally:
        twin.close()
    assert len(twin_frames) == len(frames)
    for a, b in zip(frames, twin_frames):
        assert np.array_equal(a, b), "same seed, same frames"
    assert twin_rewards == rewards, "same seed, same rewards"


def test_driving_seeds_differ() -> None:
    a, b = make_env("driving-hw", 0, image_size=S), make_env("driving-hw", 1, image_size=S)
    assert not np.array_equal(a.reset()[0], b.reset()[0])


def test_dmc_episode_is_1000_env_steps() -> None:
    env = make_env("dmc:cartpole-swingup", 0, image_size=16, action_repeat=50)  # 20 agent steps, few renders
    env.reset()
    total, steps = 0, 0
    while True:
        _, _, terminated, truncated, info = env.step(np.zeros(1, np.float32))
        total += info["env_steps"]
        steps += 1
        if terminated or truncated:
            break
    assert (total, steps, terminated, truncated) == (1000, 20, False, True)
    env.close()


def test_unknown_names_and_bad_overrides_are_typed_errors() -> None:
    from covr_ray.errors import ConfigError

    with pytest.raises(EnvError, match="dmc:cartpole-swingup"):
        make_env("dmc:cartpole-balance-typo", 0)
    with pytest.raises(EnvError, match="not a registered Gymnasium env"):
        make_env("gym:NoSuchEnv-v0", 0)
    with pytest.raises(EnvError, match="continuous"):
        make_env("gym:CartPole-v1", 0)
    with pytest.raises(ConfigError, match="env.image_size"):
        make_env("driving-hw", 0, image_size=8)
    with pytest.raises(ConfigError, match="env.seed"):
        make_env("driving-hw", -1)
    with pytest.raises(ConfigError, match="env.kwargs.lanez"):
        make_env("driving-hw", 0, lanez=3)
    with pytest.raises(ConfigError, match="env.kwargs.camera_id"):
        make_env("dmc:reacher-easy", 0, camera_id=-2)


def test_make_env_from_config_and_resolved_spec() -> None:
    from covr_envs import make_env_from_config, resolve_env_spec
    from covr_ray.config import load_config
    from covr_ray.errors import ConfigError

    cfg = load_config("dmc-walker-walk")
    env = make_env_from_config(cfg.env, seed=3)
    assert env.observation_space.shape == (9, 84, 84)
    env.reset()
    _, _, _, _, info = env.step(np.zeros(6, np.float32))
    assert info["env_steps"] == 2  # the preset's action repeat
    env.close()
    assert resolve_env_spec(cfg.env).prompt == get_env_spec("dmc:walker-walk").prompt

    byo = load_config("driving-hw", overrides=["env.name=gym:Pendulum-v1"])
    with pytest.raises(ConfigError, match="env.prompt"):
        resolve_env_spec(byo.env)
    byo = load_config("driving-hw", overrides=["env.name=gym:Pendulum-v1", "env.prompt=Swing the pendulum up",
                                               "env.action_description=one value, the hinge torque", "env.codec=numeric"])
    spec = resolve_env_spec(byo.env)
    assert (spec.prompt, spec.codec, spec.action_dim) == ("Swing the pendulum up", "numeric", 1)
    env = make_env_from_config(byo.env, seed=0)
    obs, _ = env.reset()
    assert obs.shape == (9, 84, 84)
    env.close()
