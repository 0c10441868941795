"""cluster/: the launcher YAML passes Ray's own schema, and every preset's resource asks fit the cluster."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from covr_ray.config import CovrConfig, available_presets, load_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def _load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def _gpu_ask(cfg: CovrConfig) -> float:
    r = cfg.ray
    return r.num_gpus_learner + r.num_gpus_prior * r.prior_replicas + r.num_gpus_lora


def _cpu_ask(cfg: CovrConfig) -> float:
    r = cfg.ray
    return (r.num_env_runners * r.num_cpus_per_env_runner + getattr(r, "num_cpus_prior", 0.0) * r.prior_replicas
            + getattr(r, "num_cpus_lora", 0.0) + 1.0)  # + 1: the driver (orchestrator and learner)


PRESETS = available_presets()


def test_launcher_yaml_passes_rays_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load("covr-gpu.yaml")
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # the same schema check `ray up` runs; raises on a malformed config
    assert prepared["head_node_type"] == "gpu_head"
    assert any("pip install -e" in c and "[gpu" in c for c in prepared["setup_commands"])
    assert "~/covr-ray" in prepared["file_mounts"]


@pytest.mark.parametrize("preset", PRESETS)
def test_head_node_hosts_each_presets_gpu_shares(preset: str) -> None:
    config = _load("covr-gpu.yaml")
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]["resources"]
    cfg = load_config(preset)
    assert _gpu_ask(cfg) <= head.get("GPU", 0), f"{preset} asks {_gpu_ask(cfg)} GPUs; the head has {head.get('GPU', 0)}"
    total_cpu = head["CPU"] + sum(n["resources"].get("CPU", 0) * n.get("max_workers", 0)
                                  for name, n in nodes.items() if name != config["head_node_type"])
    assert _cpu_ask(cfg) <= total_cpu


def test_scaled_up_env_runners_still_fit_and_more_prior_replicas_do_not() -> None:
    config = _load("covr-gpu.yaml")
    head_gpus = config["available_node_types"]["gpu_head"]["resources"]["GPU"]
    scaled = load_config("carla-hw", ["ray.num_env_runners=16"])
    workers = config["available_node_types"]["cpu_sim"]
    assert _cpu_ask(scaled) <= workers["resources"]["CPU"] * workers["max_workers"]
    doubled = load_config("carla-hw", ["ray.prior_replicas=2"])
    assert _gpu_ask(doubled) > head_gpus  # the README's note: more replicas need more GPUs


def test_rayjob_runs_a_real_preset_on_a_head_with_enough_gpus() -> None:
    job = _load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["covr", "train"]
    preset = argv[argv.index("--preset") + 1]
    assert preset in PRESETS
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert _gpu_ask(load_config(preset)) <= float(head["nvidia.com/gpu"])
    assert cluster["rayVersion"].startswith("2.60")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["env_vars"]["WANDB_MODE"] == "offline"
    worker = cluster["workerGroupSpecs"][0]
    assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]


def test_runtime_env_is_accepted_by_ray() -> None:
    from ray.runtime_env import RuntimeEnv

    data = _load("runtime_env.yaml")
    env = RuntimeEnv(**data)  # Ray validates field names and types
    assert env["env_vars"]["WANDB_MODE"] == "offline" and env["env_vars"]["MUJOCO_GL"] == "egl"
    assert all(isinstance(v, str) for v in data["env_vars"].values())
    assert {".venv", ".git", "runs"} <= set(data["excludes"])


def test_readme_shows_the_job_submit_command() -> None:
    text = (CLUSTER / "README.md").read_text()
    assert "ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- covr train --preset carla-hw" in text
    assert "--set ray.num_env_runners=16" in text
