"""Range checks of the fine-tune config sections (eddf, ralw, lora, schedule): errors name field and value."""

from __future__ import annotations

import pytest

from covr_ray.config import load_config
from covr_ray.errors import ConfigError


@pytest.mark.parametrize("override,field", [
    ("eddf.topk_keep=0", "eddf.topk_keep"), ("eddf.s_max=.inf", "eddf.s_max"),
    ("eddf.s_min=2.0", "eddf.s_min"), ("eddf.entropy_temperature=0", "eddf.entropy_temperature"),
    ("eddf.entropy_center=.nan", "eddf.entropy_center"), ("eddf.mode=topk:0.8", "eddf.mode"),
    ("ralw.mode=uniform", "ralw.mode"), ("lora.rank=12", "lora.rank"),
    ("lora.target_modules=(unclosed", "lora.target_modules"), ("lora.label_smoothing=1.0", "lora.label_smoothing"),
    ("schedule.max_interval=10", "schedule.max_interval"), ("schedule.first_interval=0", "schedule.first_interval"),
    ("eddf.slope=sigmoid", "eddf.slope"), ("lora.max_round_s=0", "lora.max_round_s"),
    ("prior.max_age_versions=-1", "prior.max_age_versions"),
    ("prior.starved_after_env_steps=0", "prior.starved_after_env_steps"),
])
def test_bad_values_raise_config_error_naming_the_field(override, field):
    with pytest.raises(ConfigError) as info:
        load_config("smoke", [override])
    assert info.value.field == field


def test_ablation_presets_are_plain_values():
    cfg = load_config("smoke", ["eddf.mode=topk", "eddf.topk_keep=0.95", "eddf.zscore=false",
                                "eddf.signal=reward", "ralw.mode=none"])
    assert (cfg.eddf.mode, cfg.eddf.topk_keep, cfg.eddf.zscore, cfg.eddf.signal, cfg.ralw.mode) == \
        ("topk", 0.95, False, "reward", "none")


def test_round_budget_must_fit_inside_the_orchestrators_timeout():
    """A round longer than ray.get_timeout_s would be abandoned by the orchestrator mid-save: refused up front,
    the error naming both fields."""
    with pytest.raises(ConfigError) as info:
        load_config("smoke", ["ray.get_timeout_s=100", "lora.max_round_s=90"])
    assert info.value.field == "lora.max_round_s" and "ray.get_timeout_s" in str(info.value)
    assert load_config("smoke", ["ray.get_timeout_s=100", "lora.max_round_s=80"]).lora.max_round_s == 80
