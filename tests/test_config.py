"""Config: every preset loads with the paper's values; bad values and unknown keys name the field."""

from __future__ import annotations

import pytest

from covr_ray.config import (CovrConfig, available_presets, config_from_dict, load_config, parse_override,
                             save_config)
from covr_ray.errors import ConfigError, PresetNotFoundError

DMC_100K = ["cartpole-swingup", "reacher-easy", "cheetah-run", "walker-walk", "finger-spin", "ball_in_cup-catch"]
DMC_500K = ["hopper-hop", "walker-run", "pendulum-swingup"]
ACTION_REPEAT = {"cartpole-swingup": 8, "finger-spin": 2, "walker-walk": 2, "walker-run": 2}


def test_every_scenario_has_a_preset():
    names = set(available_presets())
    expected = {f"dmc-{t}" for t in DMC_100K + DMC_500K} | {"carla-hw", "carla-gp", "driving-hw", "driving-gp",
                                                             "smoke"}
    assert expected <= names
    assert not any(n.startswith("_") for n in names)


@pytest.mark.parametrize("task", DMC_100K + DMC_500K)
def test_dmc_presets_hold_paper_values(task):
    cfg = load_config(f"dmc-{task}")
    assert cfg.env.name == f"dmc:{task}"
    assert cfg.env.action_repeat == ACTION_REPEAT.get(task, 4)
    assert (cfg.env.image_size, cfg.env.frame_stack) == (84, 3)
    assert cfg.sac.lam == 1.0
    assert cfg.schedule.cold_start_rounds == 4
    assert (cfg.lora.rank, cfg.lora.alpha) == (128, 16)
    assert cfg.prior.prior_every == 10
    assert cfg.prior.model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert cfg.schedule.total_env_steps == (100_000 if task in DMC_100K else 500_000)


@pytest.mark.parametrize("name", ["carla-hw", "carla-gp", "driving-hw", "driving-gp"])
def test_driving_presets_hold_paper_values(name):
    cfg = load_config(name)
    assert cfg.env.name == name
    assert cfg.sac.lam == 2.0
    assert cfg.schedule.cold_start_rounds == 2
    assert (cfg.lora.rank, cfg.lora.alpha) == (128, 256)
    assert cfg.prior.prior_every == 10
    assert cfg.prior.model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert cfg.env.codec == "driving"
    assert (cfg.env.image_size, cfg.env.frame_stack) == (84, 3)


def test_carla_episodes_are_1000_steps():
    assert load_config("carla-hw").env.max_episode_steps == 1000
    assert load_config("carla-gp").env.max_episode_steps == 1000


def test_smoke_preset_is_small_and_cpu_only():
    cfg = load_config("smoke")
    assert cfg.schedule.total_env_steps <= 1000
    assert cfg.ray.num_gpus_learner == cfg.ray.num_gpus_prior == cfg.ray.num_gpus_lora == 0
    assert cfg.prior.enforce_eager


def test_override_parses_types_and_applies():
    cfg = load_config("dmc-cheetah-run", ["sac.lam=2.5", "env.frame_stack=4", "prior.family=qwen2_vl",
                                          "schedule.max_interval=null", "logging.wandb=false"])
    assert cfg.sac.lam == 2.5 and isinstance(cfg.sac.lam, float)
    assert cfg.env.frame_stack == 4
    assert cfg.prior.family == "qwen2_vl"
    assert cfg.logging.wandb is False
    assert cfg.sac.actor_lr == pytest.approx(2e-4)  # cheetah's own value survives the base


@pytest.mark.parametrize("override, field, fragment", [
    ("sac.lam=-1", "sac.lam", ">= 0"),
    ("sac.lam=fast", "sac.lam", "a number"),
    ("env.frame_stack=2.5", "env.frame_stack", "an integer"),
    ("prior.backend=tensorrt", "prior.backend", "'vllm'"),
    ("lora.rank=100", "lora.rank", "128"),
    ("eddf.topk_keep=1.5", "eddf.topk_keep", "share"),
    ("prior.valid_frames=11", "prior.valid_frames", "prior_every"),
    ("sac.gamma=1", "sac.gamma", "gamma < 1"),
    ("logging.wandb=yes please", "logging.wandb", "true or false"),
    ("env.name=atari", "env.name", "dmc:"),
])
def test_invalid_values_name_the_field_and_the_allowed_values(override, field, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("driving-hw", [override])
    assert info.value.field == field
    assert field in str(info.value) and fragment in str(info.value)


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="sac.lamda") as info:
        load_config("driving-hw", ["sac.lamda=2"])
    assert "lam" in info.value.allowed
    with pytest.raises(ConfigError, match="'optimizer'"):
        load_config("driving-hw", ["optimizer.lr=1"])


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(PresetNotFoundError, match="dmc-cartpole-swingup"):
        load_config("dmc-cartpole")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("sac.lam")


def test_preset_file_with_unknown_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: smoke\nsac:\n  lam: 3.0\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match="sac.momentum"):
        load_config(str(path))
    path.write_text("extends: smoke\nsac:\n  lam: 3.0\n")
    assert load_config(str(path)).sac.lam == 3.0


def test_extends_cycle_is_reported(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"extends: {b}\n")
    b.write_text(f"extends: {a}\n")
    with pytest.raises(ConfigError, match="acyclic"):
        load_config(str(a))


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config("carla-hw", ["seed=7", "env.carla.port=3000"])
    save_config(cfg, tmp_path / "config.yaml")
    import yaml

    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg
    assert isinstance(again, CovrConfig)


def test_every_field_has_a_docstring():
    import ast
    import inspect

    import covr_ray.config as mod

    tree = ast.parse(inspect.getsource(mod))
    missing = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    if not (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                        missing.append(f"{node.name}.{stmt.target.id}")
    assert not missing, f"fields without a docstring: {missing}"
