"""Quantized export (fp16 / int8): actions within the stated bound of the float policy on recorded
observations, smaller files, typed errors before anything expensive, nothing written when the bound fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covr_deploy import Policy
from covr_deploy.manifest import sha256_file
from covr_ray.cli import main
from covr_ray.errors import ConfigError, ExportError
from covr_ray.evaluate import eval_seed
from covr_ray.export import (DEFAULT_MAX_ACTION_ERR, QUANTIZED_MODEL_FILES, QuantizationError, export_run,
                             record_observations)
from covr_ray.policy_io import policy_meta, save_policy
from covr_ray.run_dir import RunDir
from support.policies import make_run_dir, small_policy

OBS = 24  # recorded observations per export: int8 calibrates on 12, the error is measured on all 24


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    """A run directory whose policy's last layer is scaled x5 from init (not support's x20): actions spread
    over a useful range without a pre-tanh mean so large that the tiny network's int8 error dominates."""
    root = tmp_path_factory.mktemp("quant")
    run_dir, cfg, _ = make_run_dir(root)
    spec, policy = small_policy(seed=1, action_dim=2)
    with torch.no_grad():
        policy.actor.policy[-1].weight.mul_(0.25)
    save_policy(RunDir(run_dir).policy, spec, policy.state_dict(), policy_meta(cfg, 123, 2))
    return run_dir, cfg, policy.eval()


@pytest.mark.parametrize("mode", ["int8", "fp16"])
def test_quantized_actions_stay_within_the_bound_of_the_float_policy(run, tmp_path: Path, mode: str) -> None:
    run_dir, cfg, policy = run
    float_manifest, _ = export_run(run_dir, "onnx", tmp_path / "float", atol=1e-3)
    manifest, out = export_run(run_dir, "onnx", tmp_path / mode, quantize=mode, observations=OBS)
    q = manifest["quantization"]
    bound = DEFAULT_MAX_ACTION_ERR[mode]
    assert q["mode"] == mode and q["max_action_err"] == bound and q["observations"] == OBS
    assert q["action_err_max"] <= bound and 0 <= q["action_err_mean"] <= q["action_err_max"]
    assert manifest["model_file"] == QUANTIZED_MODEL_FILES[mode] and manifest["format"] == "onnx"
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", QUANTIZED_MODEL_FILES[mode]])
    # smaller than the float model (the tiny test network's fixed QDQ overhead keeps the ratio modest)
    assert manifest["size_bytes"] < 0.75 * float_manifest["size_bytes"] == 0.75 * q["float_size_bytes"]
    assert manifest["sha256"] == sha256_file(out / manifest["model_file"])
    # Independent check: the same recorded observations, through the deploy runtime, against torch.
    obs = record_observations(policy, cfg.env, OBS, eval_seed(cfg))
    with torch.no_grad():
        expected = policy(torch.from_numpy(obs)).numpy()
    assert expected.std(axis=0).min() > 0.02 and np.abs(expected).max() > 0.2  # non-trivial actions
    err = np.abs(Policy.load(out).act(obs) - expected)
    assert err.max() <= bound and err.max() == pytest.approx(q["action_err_max"], abs=1e-6)
    if mode == "int8":  # quantization moved the actions: the check compared different models
        assert err.max() > 1e-4


def test_impossible_bound_fails_typed_and_writes_nothing(run, tmp_path: Path) -> None:
    run_dir, _, _ = run
    out = tmp_path / "export"
    with pytest.raises(QuantizationError, match=r"max abs action error over 24 recorded .* bound is 1e-06") as info:
        export_run(run_dir, "onnx", out, quantize="int8", max_action_err=1e-6, observations=OBS)
    assert isinstance(info.value, ExportError) and info.value.bound == 1e-6 and info.value.measured > 1e-6
    assert f"{info.value.measured:.4g}" in str(info.value)  # the measured error is named
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []  # no staging left either
    # A previous artifact stays as it was.
    first, _ = export_run(run_dir, "onnx", out, quantize="fp16", observations=OBS)
    with pytest.raises(QuantizationError):
        export_run(run_dir, "onnx", out, quantize="int8", max_action_err=1e-6, observations=OBS)
    assert json.loads((out / "manifest.json").read_text()) == first
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", QUANTIZED_MODEL_FILES["fp16"]]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"quantize": "int4"}, ExportError, "int4"),
    ({"quantize": "int8", "fmt": "torchscript"}, ExportError, "needs --format onnx"),
    ({"quantize": "int8", "max_action_err": 0.0}, ConfigError, "--max-action-err"),
    ({"quantize": "fp16", "max_action_err": 3.0}, ConfigError, "--max-action-err"),
    ({"quantize": "int8", "observations": 1}, ConfigError, "--observations"),
])
def test_bad_arguments_are_refused_before_the_policy_is_loaded(tmp_path: Path, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):  # the run dir does not exist: the argument error comes first
        export_run(tmp_path / "no-such-run", **kwargs)


def test_quantize_without_the_runs_config_is_a_typed_error(run, tmp_path: Path) -> None:
    run_dir, _, _ = run
    lone = tmp_path / "policy.pt"
    lone.write_bytes(RunDir(run_dir).policy.read_bytes())
    with pytest.raises(ExportError, match="config.yaml"):
        export_run(lone, quantize="int8", observations=OBS)


def test_cli_export_quantize_json(run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _, _ = run
    out = tmp_path / "cli"
    assert main(["export", str(run_dir), "--quantize", "fp16", "--observations", str(OBS), "--out", str(out),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["artifact_dir"] == str(out) and printed["quantization"]["mode"] == "fp16"
    assert main(["export", str(run_dir), "--quantize", "fp16", "--observations", str(OBS), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MB float ->" in text and "recorded observations: max" in text
