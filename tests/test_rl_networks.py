"""Plain torch parts: random shift, encoder/actor/critic shapes, the exported policy, space checks."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covr_ray.errors import ConfigError, EnvError
from covr_ray.rl.augment import RandomShift
from covr_ray.rl.encoder import PixelEncoder
from covr_ray.rl.networks import LOG_STD_MAX, LOG_STD_MIN, NetworkSpec, build_actor, build_critic, build_policy
from covr_ray.rl.rl_module import network_spec


def test_random_shift_equals_replicate_pad_then_random_crop() -> None:
    x = torch.randint(0, 256, (6, 9, 20, 20), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = RandomShift(4)(x, generator=gen)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    offsets = torch.randint(0, 9, (6, 2), generator=torch.Generator().manual_seed(0))
    padded = F.pad(x.float(), (4, 4, 4, 4), mode="replicate")
    for i, (dy, dx) in enumerate(offsets.tolist()):
        np.testing.assert_array_equal(out[i].numpy(), padded[i, :, dy:dy + 20, dx:dx + 20].to(torch.uint8).numpy())
    assert len({tuple(o) for o in offsets.tolist()}) > 1  # samples get their own shift


def test_random_shift_without_padding_is_identity_and_pad_is_validated() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert RandomShift(0)(x) is x
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError):
            RandomShift(bad)  # type: ignore[arg-type]


def test_networks_shapes_and_log_std_range() -> None:
    spec = NetworkSpec(obs_shape=(9, 84, 84), action_dim=3, feature_dim=50, hidden_dim=64, num_filters=32)
    enc = PixelEncoder(spec.obs_shape, spec.num_filters)
    assert enc.out_dim == 32 * 35 * 35  # RAD/DrQ: 84 -> 41 -> 39 -> 37 -> 35
    h = enc(torch.randint(0, 256, (4, 9, 84, 84), dtype=torch.uint8))
    out = build_actor(spec, enc.out_dim)(h * 100)  # large inputs: log std still inside the bounds
    assert out.shape == (4, 6)
    assert out[:, 3:].min() >= LOG_STD_MIN and out[:, 3:].max() <= LOG_STD_MAX
    q1, q2 = build_critic(spec, enc.out_dim)(h, torch.zeros(4, 3))
    assert q1.shape == q2.shape == (4,) and not torch.equal(q1, q2)


def test_exported_policy_is_deterministic_and_bounded() -> None:
    spec = NetworkSpec(obs_shape=(9, 32, 32), action_dim=2, feature_dim=8, hidden_dim=16, num_filters=4)
    policy = build_policy(spec)
    obs = torch.randint(0, 256, (3, 9, 32, 32), dtype=torch.uint8)
    a = policy(obs)
    assert a.shape == (3, 2) and torch.equal(a, policy(obs)) and a.abs().max() <= 1
    again = build_policy(spec, policy.state_dict())
    assert torch.equal(again(obs), a)
    with pytest.raises(RuntimeError):
        build_policy(spec, {k: v for k, v in policy.state_dict().items() if not k.startswith("actor.")})


def test_bad_spaces_and_tiny_images_raise_env_errors() -> None:
    box = gym.spaces.Box(-1, 1, (2,), np.float32)
    with pytest.raises(EnvError, match="uint8"):
        network_spec(gym.spaces.Box(0, 1, (9, 32, 32), np.float32), box, {})
    with pytest.raises(EnvError, match="Box"):
        network_spec(gym.spaces.Box(0, 255, (9, 32, 32), np.uint8), gym.spaces.Discrete(3), {})
    with pytest.raises(EnvError, match="too small"):
        PixelEncoder((9, 9, 9))
