"""The Ray-free reference trainer runs the learner's networks and update on a real env and reports a curve."""

from __future__ import annotations

import json
import sys

from covr_ray.config import load_config
from covr_ray.rl.plain_train import train


def test_plain_trainer_runs_without_ray_and_writes_its_curve(tmp_path):
    cfg = load_config("smoke", ["sac.learning_starts=16", "sac.batch_size=8", "env.max_episode_steps=20"])
    out = tmp_path / "curve.json"
    curve = train(cfg, env_steps=48, device="cpu", eval_every=24, eval_episodes=1, out=out)
    assert [p["env_steps"] for p in curve] == [24, 48]
    assert curve[-1]["updates"] == 48 - 16  # one update per agent step after the warm-up
    saved = json.loads(out.read_text())
    assert saved["curve"] == curve


def test_plain_modules_import_no_ray():
    import subprocess

    code = "import sys, covr_ray.rl.plain_train, covr_ray.rl.plain; print('ray' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
