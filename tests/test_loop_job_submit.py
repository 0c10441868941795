"""`ray job submit` of a short `covr train` to a Ray head this test starts on loopback.

The head binds 127.0.0.1 only (GCS, dashboard, job server). The job runs the real `covr train` CLI
(`--address auto` joins the head) with the prior switched off to keep CI short: the submission path,
the runtime env and the run directory are what this test is about; the COVR loop itself is
tests/test_loop_e2e.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.ray_head import start_head, stop_head

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture()
def ray_head():
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed in this environment")
    # Ray 2.60 enables token auth: give this head (and the test's client) a token of their own instead of
    # touching ~/.ray/auth_token.
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    head = start_head(env, dashboard=True, timeout_s=240)
    try:
        yield {"dashboard": head.dashboard, "gcs": head.gcs, "env": env}
    finally:
        stop_head(head)


def test_ray_job_submit_runs_covr_train(ray_head, tmp_path):
    run_dir = tmp_path / "job-run"
    runtime_env = {"env_vars": {"WANDB_MODE": "offline", "MUJOCO_GL": "egl", "RAY_ADDRESS": ray_head["gcs"]}}
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"],
           "--runtime-env-json", json.dumps(runtime_env), "--",
           str(BIN / "covr"), "train", "--preset", "smoke", "--address", "auto", "--run-dir", str(run_dir),
           "--no-progress", "--set", "prior.enabled=false", "--set", "schedule.total_env_steps=60",
           "--set", "schedule.eval_episodes=1", "--set", "sac.learning_starts=20", "--json"]
    for _attempt in range(30):  # the dashboard answers before its job agent has registered
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ray_head["env"], cwd=REPO)
        out = proc.stdout + proc.stderr
        if proc.returncode == 0 or "No available agent" not in out:
            break
        time.sleep(5)
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower(), out[-4000:]
    summary = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    assert summary["env_steps"] >= 60
    assert (run_dir / "config.yaml").is_file() and (run_dir / "policy" / "policy.pt").is_file()
    assert list((run_dir / "eval").glob("eval-*.json"))
