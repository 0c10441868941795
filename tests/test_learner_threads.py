"""``ray.learner_threads``: the learner's torch threads default to the CPUs its own actors leave free."""

from __future__ import annotations

import pytest

from covr_ray.config import load_config
from covr_ray.errors import ConfigError
from covr_ray.rl.algo import learner_threads


def _cfg(*sets: str):
    return load_config("driving-hw-cpu", ["ray.num_gpus_learner=0", "ray.num_cpus_per_env_runner=1",
                                          "ray.num_cpus_prior=1", "ray.num_cpus_lora=1", *sets])


def test_default_is_the_cpus_less_the_actors_reservations():
    # the prior on: 1 env runner + 1 prior replica + the LoRA trainer reserve 3 CPUs
    assert learner_threads(_cfg(), cpus=2) == 1  # at least 1
    assert learner_threads(_cfg(), cpus=16) == 13
    assert learner_threads(_cfg("prior.enabled=false"), cpus=16) == 15  # only the env runner
    assert learner_threads(_cfg("ray.num_env_runners=4", "ray.num_cpus_per_env_runner=0.5"), cpus=16) == 12
    assert learner_threads(_cfg("ray.prior_replicas=2"), cpus=8) == 4
    # the demo presets reserve half a CPU each: 2 - 1.5 rounds down to 0, and the learner keeps 1
    assert learner_threads(load_config("driving-hw-cpu", ["ray.num_gpus_learner=0"]), cpus=2) == 1
    assert learner_threads(load_config("driving-hw-cpu", ["ray.num_gpus_learner=0"]), cpus=16) == 14


def test_an_explicit_value_wins_and_a_cluster_or_gpu_learner_keeps_torchs_default():
    assert learner_threads(_cfg("ray.learner_threads=3"), cpus=2) == 3
    assert learner_threads(_cfg("ray.address=auto"), cpus=16) is None
    assert learner_threads(_cfg("ray.address=auto", "ray.learner_threads=2"), cpus=16) == 2


@pytest.mark.parametrize("bad", ["0", "-1", "1.5"])
def test_bad_values_are_typed_errors(bad):
    with pytest.raises(ConfigError, match="ray.learner_threads"):
        _cfg(f"ray.learner_threads={bad}")
