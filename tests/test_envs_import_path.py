"""Your own env by import path: ``gym:<module>:<id>`` and ``env.imports``, in the driver and in env runners.

The env modules are written into a temp dir at test time, so nothing but that dir makes them importable.
The driver gets the dir on ``sys.path`` (``monkeypatch.syspath_prepend``); the Ray workers get it the way a
user would give it to them, ``ray.init(runtime_env={"env_vars": {"PYTHONPATH": <dir>}})``. A third module
lives in a dir that only the driver sees: an env runner asked for it must fail, naming it, which shows that
the runner imports the module itself and that the driver's import is not what makes the other cases work.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import gymnasium as gym
import numpy as np
import pytest

from covr_envs import make_env, make_env_from_config, resolve_env_spec
from covr_envs.gym_env import gym_spec
from covr_ray.config import EnvSection, load_config
from covr_ray.errors import ConfigError, EnvError
from support.ray_local import local_ray

S = 24
TIMEOUT_S = 180

#: an env with image observations and a Box action space with bounds other than [-1, 1]; registers ENV_ID.
IMAGE_ENV = '''
"""A user's own pixel env (written by tests/test_envs_import_path.py)."""
import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "@ENV_ID@"


class Stripe(gym.Env):
    """A red row moving down a black image; reward = first action value."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode=None, size=32):
        self.size = size
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 5.0], np.float32))
        self._row = 0

    def _image(self):
        image = np.zeros((self.size, self.size, 3), np.uint8)
        image[self._row % self.size, :, 0] = 255
        return image

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._row = int(self.np_random.integers(0, self.size))
        return self._image(), {}

    def step(self, action):
        self._row += 1
        return self._image(), float(action[0]), False, False, {"inner_action": np.asarray(action).tolist()}


gym.register(id=ENV_ID, entry_point=__name__ + ":Stripe", max_episode_steps=20)
'''

#: an env with vector observations and rgb_array rendering; registering ENV_ID is all that importing it does.
RENDER_ENV = '''
"""A user's module that only registers a Gymnasium id when imported (written by the tests)."""
import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "@ENV_ID@"


class Point(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Box(-0.5, 0.5, (1,), np.float32)
        self._x = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._x = float(self.np_random.uniform(-1, 1))
        return np.array([self._x, 0.0], np.float32), {}

    def step(self, action):
        self._x = float(np.clip(self._x + action[0], -1, 1))
        return np.array([self._x, 0.0], np.float32), -abs(self._x), False, False, {}

    def render(self):
        image = np.zeros((40, 40, 3), np.uint8)
        image[:, int((self._x + 1) * 19.5), 1] = 255
        return image


gym.register(id=ENV_ID, entry_point=__name__ + ":Point", max_episode_steps=20)
'''

IMAGE_MOD, IMAGE_ID = "covr_byo_image_env", "CovrByoImage-v0"
RENDER_MOD, RENDER_ID = "covr_byo_render_env", "CovrByoRender-v0"
BROKEN_MOD = "covr_byo_broken_env"
DRIVER_ONLY_MOD, DRIVER_ONLY_ID = "covr_byo_driver_only_env", "CovrByoDriverOnly-v0"
USER_MODULES = (IMAGE_MOD, RENDER_MOD, BROKEN_MOD, DRIVER_ONLY_MOD)
USER_IDS = (IMAGE_ID, RENDER_ID, DRIVER_ONLY_ID)
PROMPT = ["env.prompt=A red stripe on black", "env.action_description=2 values", "env.codec=numeric"]


def _forget_user_envs() -> None:
    """Unimport the user modules and unregister their ids: each test must import them itself."""
    for module in USER_MODULES:
        sys.modules.pop(module, None)
    for env_id in USER_IDS:
        gym.registry.pop(env_id, None)
    gym_spec.cache_clear()


@pytest.fixture(scope="module")
def user_dirs() -> Iterator[dict[str, Path]]:
    """``workers``: on the driver's and (through runtime_env) the workers' path; ``driver``: driver only."""
    root = Path(tempfile.mkdtemp(prefix="covr_byo_"))
    dirs = {"workers": root / "workers", "driver": root / "driver"}
    for d in dirs.values():
        d.mkdir()
    (dirs["workers"] / f"{IMAGE_MOD}.py").write_text(IMAGE_ENV.replace("@ENV_ID@", IMAGE_ID))
    (dirs["workers"] / f"{RENDER_MOD}.py").write_text(RENDER_ENV.replace("@ENV_ID@", RENDER_ID))
    (dirs["workers"] / f"{BROKEN_MOD}.py").write_text("raise RuntimeError('the user module is broken')\n")
    (dirs["driver"] / f"{DRIVER_ONLY_MOD}.py").write_text(IMAGE_ENV.replace("@ENV_ID@", DRIVER_ONLY_ID))
    yield dirs
    _forget_user_envs()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def on_driver_path(user_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """Both dirs on the driver's ``sys.path``, no user module imported yet."""
    _forget_user_envs()
    monkeypatch.syspath_prepend(str(user_dirs["workers"]))
    monkeypatch.syspath_prepend(str(user_dirs["driver"]))
    yield user_dirs
    _forget_user_envs()


@pytest.fixture(scope="module")
def ray_user_path(user_dirs: dict[str, Path]) -> Iterator[None]:
    """A fresh Ray whose workers see only the ``workers`` dir, through PYTHONPATH, as a user would set it."""
    with local_ray(runtime_env={"env_vars": {"PYTHONPATH": str(user_dirs["workers"]), "MUJOCO_GL": "egl"}}):
        yield


def _config(name: str, *extra: str) -> Any:
    return load_config("smoke", overrides=[
        f"env.name={name}", *PROMPT, f"env.image_size={S}", "env.max_episode_steps=10", "prior.enabled=false",
        "sac.hidden_dim=32", "sac.num_filters=8", "sac.feature_dim=16", "sac.batch_size=8",
        "sac.rollout_fragment_length=4", "sac.buffer_capacity=200", "ray.num_env_runners=1",
        "ray.num_envs_per_env_runner=1", "ray.num_cpus_per_env_runner=0.5",
        "ray.restart_failed_env_runners=false", *extra])


def _check_contract(env: gym.Env, action_dim: int) -> np.ndarray:
    """The COVR contract; returns the info of one step with action [1, -1, ...]."""
    assert env.observation_space.dtype == np.uint8 and env.observation_space.shape == (9, S, S)
    assert env.action_space.dtype == np.float32 and env.action_space.shape == (action_dim,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.uint8 and obs.shape == (9, S, S) and env.observation_space.contains(obs)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (S, S, 3)
    assert np.array_equal(frame, obs[-3:].transpose(1, 2, 0)), "render() is the newest stacked frame"
    assert frame.any(), "the frame shows the env's image, not a blank"
    action = np.array([1.0] + [-1.0] * (action_dim - 1), np.float32)
    obs, reward, terminated, truncated, info = env.step(action)
    assert obs.shape == (9, S, S) and info["env_steps"] == 1 and not terminated
    return info


# --- (a) gym:<module>:<id> in the driver ---------------------------------------------------------------

def test_module_colon_id_resolves_and_makes_the_covr_contract(on_driver_path: dict[str, Path]) -> None:
    name = f"gym:{IMAGE_MOD}:{IMAGE_ID}"
    assert IMAGE_MOD not in sys.modules
    cfg = _config(name)
    spec = resolve_env_spec(cfg.env)
    assert IMAGE_MOD in sys.modules, "resolving the spec imported the user's module"
    assert spec.name == name and spec.family == "gym" and spec.action_dim == 2
    assert spec.prompt == "A red stripe on black" and spec.codec == "numeric"

    env = make_env(name, seed=0, image_size=S)
    try:
        info = _check_contract(env, action_dim=2)
        assert info["inner_action"] == [2.0, 0.0], "[-1, 1] is mapped onto the env's own bounds"
    finally:
        env.close()
    env = make_env_from_config(cfg.env, seed=0)
    try:
        _check_contract(env, action_dim=2)
    finally:
        env.close()


def test_make_env_imports_the_module_itself(on_driver_path: dict[str, Path]) -> None:
    assert IMAGE_MOD not in sys.modules
    env = make_env(f"gym:{IMAGE_MOD}:{IMAGE_ID}", seed=1, image_size=S)  # nothing resolved a spec before
    try:
        _check_contract(env, action_dim=2)
    finally:
        env.close()
    assert sys.modules[IMAGE_MOD].__file__ == str(on_driver_path["workers"] / f"{IMAGE_MOD}.py")


# --- (b) env.imports: a module that only registers an id ------------------------------------------------

def test_env_imports_registers_the_id_before_the_env_is_made(on_driver_path: dict[str, Path]) -> None:
    with pytest.raises(EnvError, match=r"env\.imports") as info:  # without the import the id is unknown
        make_env(f"gym:{RENDER_ID}", seed=0, image_size=S)
    assert RENDER_ID in str(info.value)

    cfg = _config(f"gym:{RENDER_ID}", f"env.imports=[{RENDER_MOD}]")
    assert cfg.env.imports == [RENDER_MOD]
    spec = resolve_env_spec(cfg.env)
    assert spec.action_dim == 1 and spec.family == "gym"
    env = make_env_from_config(cfg.env, seed=0)
    try:
        _check_contract(env, action_dim=1)  # pixels from render(): the env's observations are vectors
    finally:
        env.close()

    _forget_user_envs()
    env = make_env(f"gym:{RENDER_ID}", seed=0, image_size=S, imports=[RENDER_MOD])
    try:
        _check_contract(env, action_dim=1)
    finally:
        env.close()


# --- (d) bad inputs: typed errors in the driver, before any Ray actor starts ------------------------------

def test_missing_module_is_a_typed_error_naming_it_and_what_to_do(on_driver_path: dict[str, Path]) -> None:
    from covr_ray.rl.algo import build_algorithm_config

    name = "gym:covr_byo_no_such_module:Whatever-v0"
    cfg = _config(name)
    for call in (lambda: resolve_env_spec(cfg.env), lambda: make_env(name, seed=0),
                 lambda: build_algorithm_config(cfg)):  # build_algorithm_config starts nothing; build_algo would
        with pytest.raises(EnvError) as info:
            call()
        text = str(info.value)
        assert "'covr_byo_no_such_module'" in text and name in text
        assert "PYTHONPATH" in text and "py_modules" in text and "not importable" in text


def test_module_without_the_id_names_the_module_and_the_ids_it_has(on_driver_path: dict[str, Path]) -> None:
    from covr_ray.rl.algo import build_algorithm_config

    cfg = _config(f"gym:{IMAGE_MOD}:CovrByoNope-v0")
    for call in (lambda: resolve_env_spec(cfg.env), lambda: build_algorithm_config(cfg)):
        with pytest.raises(EnvError, match="registers no Gymnasium env 'CovrByoNope-v0'") as info:
            call()
        assert f"'{IMAGE_MOD}'" in str(info.value) and IMAGE_ID in str(info.value)


def test_module_that_raises_on_import_is_a_typed_error(on_driver_path: dict[str, Path]) -> None:
    cfg = _config(f"gym:{RENDER_ID}", f"env.imports=[{BROKEN_MOD}]")
    with pytest.raises(EnvError, match=f"env.imports entry '{BROKEN_MOD}'.*RuntimeError: the user module is broken"):
        resolve_env_spec(cfg.env)
    cfg = _config(f"gym:{RENDER_ID}", "env.imports=[covr_byo_absent_registrar]")
    with pytest.raises(EnvError, match="'covr_byo_absent_registrar' is not importable"):
        make_env_from_config(cfg.env, seed=0)


@pytest.mark.parametrize("override, field, value", [
    ("env.imports=[my-envs]", "env.imports", "my-envs"),
    ("env.imports=[envs/my_envs.py]", "env.imports", "envs/my_envs.py"),
    ("env.imports=[class]", "env.imports", "class"),
    ("env.imports=[my_envs, '']", "env.imports", ""),
    ("env.name=gym:my-envs:MyEnv-v0", "env.name", "gym:my-envs:MyEnv-v0"),
    ("env.name='gym:my_envs:'", "env.name", "gym:my_envs:"),
    ("env.name=gym:a:b:MyEnv-v0", "env.name", "gym:a:b:MyEnv-v0"),
])
def test_bad_module_names_are_config_errors(override: str, field: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("smoke", [override])
    assert info.value.field == field and info.value.value == value
    assert "dotted module name" in str(info.value)


def test_make_env_refuses_bad_imports_and_names_without_a_config() -> None:
    with pytest.raises(ConfigError) as info:
        make_env("gym:Pendulum-v1", seed=0, imports=["not a module"])
    assert info.value.field == "env.imports" and info.value.value == "not a module"
    with pytest.raises(ConfigError, match="a list of dotted module names"):
        make_env("gym:Pendulum-v1", seed=0, imports="my_envs")
    with pytest.raises(EnvError, match="dotted module name"):
        make_env("gym:my-envs:MyEnv-v0", seed=0)
    with pytest.raises(ConfigError, match="env.imports"):
        EnvSection(name="gym:Pendulum-v1", imports=["my-envs"]).validate("env")


# --- (c) through a real env runner process ----------------------------------------------------------------

def _probe(module: str) -> Callable[[Any], tuple[int, str, int]]:
    def probe(runner: Any) -> tuple[int, str, int]:  # a closure: shipped to the runner by value
        import os
        import sys

        episodes = runner.sample(num_timesteps=6, random_actions=True)
        loaded = sys.modules.get(module)
        return os.getpid(), str(getattr(loaded, "__file__", "") or ""), sum(len(e) for e in episodes)

    return probe


def test_covr_train_env_runner_imports_the_module_of_the_env_name(
        on_driver_path: dict[str, Path], ray_user_path: None) -> None:
    """The `covr train` path: the one registered creator with a run context, in a remote env runner."""
    from covr_ray.rl.algo import build_algorithm_config

    cfg = _config(f"gym:{IMAGE_MOD}:{IMAGE_ID}")
    assert resolve_env_spec(cfg.env).action_dim == 2  # the driver's check, as CovrRun.setup does it
    run_context = {"covr": cfg.to_dict(), "run_id": "byo-test"}
    algo = build_algorithm_config(cfg, run_context=run_context).build_algo()
    try:
        results = algo.env_runner_group.foreach_env_runner(_probe(IMAGE_MOD), local_env_runner=False,
                                                           timeout_seconds=TIMEOUT_S)
    finally:
        algo.stop()
    assert len(results) == 1
    pid, module_file, steps = results[0]
    assert pid != os.getpid(), "sampled in a separate runner process"
    assert module_file == str(on_driver_path["workers"] / f"{IMAGE_MOD}.py"), "the runner imported the module"
    assert steps >= 6


def test_env_runner_imports_env_imports(on_driver_path: dict[str, Path], ray_user_path: None) -> None:
    """The covr_envs creator (configure_env_runners) with ``env.imports``, in a remote env runner."""
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.env.env_runner_group import EnvRunnerGroup

    from covr_envs.rllib import configure_env_runners

    cfg = _config(f"gym:{RENDER_ID}", f"env.imports=[{RENDER_MOD}]")
    group = EnvRunnerGroup(config=configure_env_runners(AlgorithmConfig(), cfg), local_env_runner=False)
    try:
        results = group.foreach_env_runner(_probe(RENDER_MOD), local_env_runner=False, timeout_seconds=TIMEOUT_S)
    finally:
        group.stop()
    assert len(results) == 1
    pid, module_file, steps = results[0]
    assert pid != os.getpid() and steps >= 6
    assert module_file == str(on_driver_path["workers"] / f"{RENDER_MOD}.py")


def test_env_runner_without_the_module_on_its_path_fails_naming_it(
        on_driver_path: dict[str, Path], ray_user_path: None) -> None:
    """The driver imports this module fine, the workers cannot: the runner must fail, naming the module.
    If the driver's import were what made the runner work, this runner would start and sample."""
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.env.env_runner_group import EnvRunnerGroup

    from covr_envs.rllib import configure_env_runners

    name = f"gym:{DRIVER_ONLY_MOD}:{DRIVER_ONLY_ID}"
    cfg = _config(name)
    config = configure_env_runners(AlgorithmConfig(), cfg)  # the driver check passes: the driver has it
    assert DRIVER_ONLY_MOD in sys.modules
    group = None
    with pytest.raises(EnvError) as info:
        group = EnvRunnerGroup(config=config, local_env_runner=False)
    if group is not None:  # pragma: no cover - only when the assertion above already failed
        group.stop()
    text = str(info.value)
    assert f"'{DRIVER_ONLY_MOD}' is not importable in this process" in text and name in text
    assert f"pid {os.getpid()} " not in text, "raised in the runner process, not in the driver"
    assert "PYTHONPATH" in text
