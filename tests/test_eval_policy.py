"""Evaluation of a policy network alone on the run's real env (embedded driving, DMControl)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covr_ray.cli import main
from covr_ray.config import load_config
from covr_ray.errors import CheckpointError, ConfigError, EnvError
from covr_ray.evaluate import (eval_metrics, eval_seed, evaluate_policy, evaluate_run, policy_act_fn, run_episodes,
                               write_eval_result)
from covr_ray.metrics import check_key
from support.policies import IMAGE, make_run_dir, small_policy


def _driving_cfg(max_steps: int = 5):
    return load_config("driving-hw", [f"env.image_size={IMAGE}", f"env.max_episode_steps={max_steps}"]).env


def _by_hand(policy, env_cfg, seed: int) -> tuple[float, int, float]:
    """Reference: one episode stepped here, independently of run_episodes."""
    from covr_envs import make_env_from_config

    env = make_env_from_config(env_cfg, seed)
    obs, _ = env.reset(seed=seed)
    total, steps, done, info = 0.0, 0, False, {}
    while not done:
        with torch.no_grad():
            action = policy(torch.from_numpy(obs)[None])[0].numpy()
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        done = terminated or truncated
    env.close()
    return total, steps, float(info["distance_m"])


def test_driving_eval_matches_a_hand_rollout_and_is_deterministic() -> None:
    _, policy = small_policy(action_dim=2)
    env_cfg = _driving_cfg()
    result = evaluate_policy(policy, env_cfg, episodes=2, seed=11)
    again = evaluate_policy(policy, env_cfg, episodes=2, seed=11)
    assert result["returns"] == again["returns"] and result["distances_m"] == again["distances_m"]
    ret, steps, dist = _by_hand(policy, env_cfg, seed=12)  # episode 1 resets with seed + 1
    assert result["returns"][1] == pytest.approx(ret)
    assert result["lengths"][1] == steps and result["distances_m"][1] == pytest.approx(dist)
    assert result["return_mean"] == pytest.approx(np.mean(result["returns"]))
    assert result["return_std"] == pytest.approx(np.std(result["returns"]))
    assert result["distance_m_mean"] == pytest.approx(np.mean(result["distances_m"]))
    assert all(1 <= n <= 5 for n in result["lengths"]) and all(d > 0 for d in result["distances_m"])
    assert result["episode_env_steps"] == result["lengths"]  # driving: action repeat 1
    assert result["env"] == "driving-hw" and result["actor"] == "policy" and result["episodes"] == 2


def test_dmc_eval_has_no_distance_and_counts_action_repeat() -> None:
    _, policy = small_policy(action_dim=1)
    env_cfg = load_config("dmc-cartpole-swingup", [f"env.image_size={IMAGE}", "env.max_episode_steps=3"]).env
    result = evaluate_policy(policy, env_cfg, episodes=1, seed=0)
    assert "distance_m_mean" not in result and "distances_m" not in result
    assert result["lengths"] == [3] and result["episode_env_steps"] == [24]  # cartpole repeats actions 8 times
    assert set(eval_metrics(result)) == {"eval/return_mean", "eval/return_std", "eval/length_mean"}


def test_act_hook_sees_frame_and_obs_and_records_the_first_episode() -> None:
    env_cfg = _driving_cfg(max_steps=4)
    seen: list[tuple[tuple, tuple]] = []

    def act(frame: np.ndarray, obs: np.ndarray) -> np.ndarray:
        seen.append((frame.shape, obs.shape))
        # The newest frame is the last 3 channels of the stacked observation.
        assert np.array_equal(frame.transpose(2, 0, 1), obs[-3:])
        return np.array([0.0, 0.5], np.float32)

    result, frames = run_episodes(act, env_cfg, episodes=2, seed=0, actor_name="vlm", record_first_episode=True)
    assert result["actor"] == "vlm"
    assert len(frames) == result["lengths"][0] + 1  # reset frame + one per step
    assert frames[0].shape == (IMAGE, IMAGE, 3) and frames[0].dtype == np.uint8
    assert seen[0] == ((IMAGE, IMAGE, 3), (9, IMAGE, IMAGE)) and len(seen) == sum(result["lengths"])


def test_bad_actions_and_arguments_are_typed_errors() -> None:
    env_cfg = _driving_cfg()
    with pytest.raises(EnvError, match="shape"):
        run_episodes(lambda frame, obs: np.zeros(3, np.float32), env_cfg, episodes=1, seed=0)
    with pytest.raises(EnvError, match="finite"):
        run_episodes(lambda frame, obs: np.array([np.nan, 0.0], np.float32), env_cfg, episodes=1, seed=0)
    with pytest.raises(ConfigError, match="episodes"):
        run_episodes(lambda frame, obs: np.zeros(2, np.float32), env_cfg, episodes=0, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        run_episodes(lambda frame, obs: np.zeros(2, np.float32), env_cfg, episodes=1, seed=-1)
    _, wrong = small_policy(action_dim=2, image_size=40)
    with pytest.raises(CheckpointError, match="observations"):
        evaluate_policy(wrong, env_cfg, episodes=1, seed=0)
    with pytest.raises(ConfigError, match="env_steps"):
        write_eval_result("/nonexistent", {"return_mean": 1.0})


def test_policy_act_fn_is_the_deterministic_policy_action() -> None:
    _, policy = small_policy(action_dim=2)
    obs = np.random.default_rng(0).integers(0, 256, (9, IMAGE, IMAGE), dtype=np.uint8)
    act = policy_act_fn(policy)
    with torch.no_grad():
        expected = policy(torch.from_numpy(obs)[None])[0].numpy()
    assert np.array_equal(act(np.zeros((IMAGE, IMAGE, 3), np.uint8), obs), expected)


def test_eval_metrics_are_namespaced() -> None:
    result = {"return_mean": 1.0, "return_std": 0.5, "length_mean": 5.0, "distance_m_mean": 20.0,
              "distance_m_std": 1.0, "returns": [1.0]}
    metrics = eval_metrics(result)
    assert all(check_key(k) for k in metrics) and metrics["eval/distance_m_mean"] == 20.0


def test_evaluate_run_writes_json_and_gif(tmp_path: Path) -> None:
    run_dir, cfg, policy = make_run_dir(tmp_path, seed=3)
    result, path = evaluate_run(run_dir, episodes=2, video=True, video_format="gif")
    assert path == run_dir / "eval" / "eval-123.json"
    stored = json.loads(path.read_text())
    assert stored["env_steps"] == 123 and stored["seed"] == eval_seed(cfg) == 100_003
    assert stored["returns"] == result["returns"] and stored["preset"] == "driving-hw"
    from PIL import Image

    with Image.open(result["video"]) as gif:
        assert gif.format == "GIF" and gif.n_frames == result["lengths"][0] + 1


def test_a_second_eval_keeps_the_first_and_goes_beside_it(tmp_path: Path) -> None:
    """The loop's final evaluation (or an earlier `covr eval`) at the same env steps is never written over."""
    from covr_ray.run_dir import RunDir

    run_dir, _, _ = make_run_dir(tmp_path, seed=3)
    loop_result = {"env_steps": 123, "episodes": 5, "returns": [1.0] * 5, "by": "the loop"}
    write_eval_result(run_dir, loop_result)
    before = (run_dir / "eval" / "eval-123.json").read_bytes()
    paths = [evaluate_run(run_dir, episodes=1, video=True, video_format="gif")[1] for _ in range(2)]
    assert [p.name for p in paths] == ["eval-123.2.json", "eval-123.3.json"]
    assert (run_dir / "eval" / "eval-123.json").read_bytes() == before  # kept, byte for byte
    assert (run_dir / "eval" / "video-123.2.gif").is_file() and (run_dir / "eval" / "video-123.3.gif").is_file()
    assert json.loads(paths[1].read_text())["episodes"] == 1
    assert RunDir(run_dir).eval_results() == [(123, run_dir / "eval" / "eval-123.json")]  # the run's own


def test_cli_eval_json_and_mp4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("imageio_ffmpeg", reason="mp4 needs the video extra (imageio, imageio-ffmpeg)")
    run_dir, _, _ = make_run_dir(tmp_path)
    assert main(["eval", str(run_dir), "--episodes", "2", "--seed", "5", "--json", "--video",
                 "--video-format", "mp4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["episodes"] == 2 and out["seed"] == 5 and out["env_steps"] == 123
    assert out["distance_m_mean"] > 0 and Path(out["json_path"]).is_file()
    import imageio.v2 as imageio

    reader = imageio.get_reader(out["video"])
    try:
        assert reader.count_frames() == out["lengths"][0] + 1
    finally:
        reader.close()


def test_cli_eval_human_output_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _, _ = make_run_dir(tmp_path)
    assert main(["eval", str(run_dir), "--episodes", "1"]) == 0
    text = capsys.readouterr().out
    assert "episode return" in text and "driving distance" in text
    assert main(["eval", str(tmp_path / "missing"), "--episodes", "1"]) == 2
    assert "is not a run directory: config.yaml is missing" in capsys.readouterr().err


def test_random_actor_is_seeded_uniform_and_written_beside_the_policy_eval(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`covr eval --actor random`: the random-policy level, on the same episodes (seeds) as the policy's eval."""
    from covr_ray.evaluate import random_act_fn

    act = random_act_fn(2, seed=4)
    actions = np.stack([act(None, None) for _ in range(2000)])
    assert actions.shape == (2000, 2) and actions.min() >= -1 and actions.max() <= 1
    assert abs(actions.mean()) < 0.05 and abs(actions.std() - 1 / np.sqrt(3)) < 0.02  # U(-1, 1): 4-sigma bounds
    again = random_act_fn(2, seed=4)
    assert np.array_equal(np.stack([again(None, None) for _ in range(2000)]), actions)

    run_dir, cfg, _ = make_run_dir(tmp_path)
    assert main(["eval", str(run_dir), "--actor", "random", "--episodes", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["actor"] == "random" and out["seed"] == eval_seed(cfg) and len(out["returns"]) == 2
    assert Path(out["json_path"]) == run_dir / "eval" / "random.json"
    assert json.loads((run_dir / "eval" / "random.json").read_text())["returns"] == out["returns"]
    assert main(["eval", str(run_dir), "--actor", "random", "--episodes", "1"]) == 0
    assert "uniform random actions" in capsys.readouterr().out
    assert main(["eval", str(run_dir), "--actor", "random", "--adapter", "v1"]) == 2
    assert "--adapter" in capsys.readouterr().err


def test_constant_actor_takes_numbers_or_a_codec_answer_and_refuses_anything_else(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from covr_ray.evaluate import evaluate_baseline, run_episodes

    run_dir, cfg, _ = make_run_dir(tmp_path)
    by_text, path = evaluate_baseline(run_dir, "constant", episodes=2, action="keep lane, accelerate slightly")
    assert path == run_dir / "eval" / "constant.json" and by_text["action"] == pytest.approx([0.0, 1 / 3])
    by_numbers, _ = evaluate_baseline(run_dir, "constant", episodes=2, action="0, 0.3333333")
    assert by_numbers["returns"] == pytest.approx(by_text["returns"])  # same action, same episodes
    reference, _ = run_episodes(lambda f, o: np.array([0.0, 1 / 3], np.float32), cfg.env, 2, eval_seed(cfg))
    assert by_text["returns"] == pytest.approx(reference["returns"])
    for bad in ("fly", "0.5", "0, 2", "nan, 0"):
        with pytest.raises(ConfigError, match="--action"):
            evaluate_baseline(run_dir, "constant", episodes=1, action=bad)
    with pytest.raises(ConfigError, match="--action"):
        evaluate_baseline(run_dir, "constant", episodes=1)
    assert main(["eval", str(run_dir), "--actor", "random", "--action", "0,0"]) == 2
    assert "only with --actor constant" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--actor", "constant", "--action", "keep lane, keep speed",
                 "--episodes", "1"]) == 0
    assert "constant action [0.0, 0.0] ('keep lane, keep speed')" in capsys.readouterr().out
