"""`covr bench env` prints one JSON object with the env's step rate."""

from __future__ import annotations

import json

import pytest

from covr_ray.cli import main


def test_bench_env_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "env", "--env", "driving-gp", "--steps", "4", "--image-size", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"env", "steps_per_s", "ms_per_step"} and out["env"] == "driving-gp"
    assert out["steps_per_s"] > 0 and out["ms_per_step"] == pytest.approx(1000.0 / out["steps_per_s"], rel=0.02)


def test_bench_env_bad_input_is_an_error_exit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "env", "--env", "no-such-env", "--steps", "2", "--json"]) == 2
    assert "unknown env 'no-such-env'" in capsys.readouterr().err
    assert main(["bench", "env", "--env", "driving-hw", "--steps", "0"]) == 2
