"""The whole RLlib algorithm on a tiny pixel env with a prior wrapper (local Ray, one process-local env
runner): priors flow env -> replay -> batch -> loss, random warm-up actions, lambda switched at run
time, and checkpoint save -> restore keeps weights, optimizer state, lambda and replay contents."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from covr_ray.config import config_from_dict, load_config
from covr_ray.errors import CheckpointError, ConfigError, LearnerError
from support.dot_env import DotEnv, register_prior_dot_env

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LEARNING_STARTS = 16


@pytest.fixture(scope="module")
def prior_dot_env(ray_session: None) -> str:
    """The prior dot env (support/dot_env.py) registered with this module's Ray; its name."""
    return register_prior_dot_env("covr_test_prior_dot")


@pytest.fixture(scope="module")
def trained(prior_dot_env: str) -> Iterator[Any]:
    """An algorithm after 6 iterations (24 agent steps, updates from step 16)."""
    from covr_ray.rl.algo import build_algorithm_config

    cfg = load_config("smoke", overrides=[
        "sac.hidden_dim=32", "sac.num_filters=8", "sac.feature_dim=16", "sac.batch_size=16",
        f"sac.learning_starts={LEARNING_STARTS}", "sac.rollout_fragment_length=4", "sac.buffer_capacity=500",
        "sac.lam=2.0", "schedule.cold_start_rounds=0", "ray.num_env_runners=0", "env.image_size=24"])
    config = build_algorithm_config(cfg, env=prior_dot_env, env_config={"size": 24, "late_every": 2})
    config.debugging(seed=None)  # see support.learner.make_learner
    torch.manual_seed(0)
    algo = config.build_algo()
    results = [algo.train() for _ in range(6)]
    yield algo, results
    algo.stop()


def test_priors_flow_from_env_to_loss(trained: Any) -> None:
    from covr_ray.rl.algo import learner_metrics, replay_buffer

    algo, results = trained
    metrics = learner_metrics(results[-1])
    assert metrics["rollout/agent_steps"] == 24
    assert metrics["learner/samples_trained"] > 0  # updates ran (4 per iteration after learning starts)
    assert 0 < metrics["learner/prior_coverage"] <= 1
    assert metrics["learner/prior_loss"] > 0
    assert metrics["learner/prior_weight"] == 2.0
    assert np.isfinite(metrics["learner/entropy"]) and np.isfinite(metrics["learner/critic_loss"])
    stats = replay_buffer(algo).core.stats()
    # every 2nd step has a prior, every 2nd of those arrives one step late and is attached by id
    assert stats["replay/prior_coverage"] == pytest.approx(0.5)
    assert stats["replay/late_priors_attached"] > 0 and stats["replay/late_priors_missed"] == 0
    assert stats["replay/frames"] == stats["replay/size"] + 3 * 2  # one frame per step + 3 per episode start


def test_first_steps_are_uniform_random(trained: Any) -> None:
    from covr_ray.rl.algo import replay_buffer

    core = replay_buffer(trained[0]).core
    from scipy.stats import kstest

    first = core._action[:LEARNING_STARTS]
    # uniform in [-1, 1]: mean |a| = 0.5 and half the actions beyond 0.5 in size; the fresh policy's
    # tanh(N(~0, ~0.2)) stays near 0 (about 1 % beyond 0.5) and fails the Kolmogorov-Smirnov test
    assert np.abs(first).mean() > 0.35
    assert (np.abs(first) > 0.5).mean() > 0.3
    assert kstest(first.reshape(-1), "uniform", args=(-1.0, 2.0)).pvalue > 1e-3


def test_prior_weight_switch_through_the_learner_group(trained: Any) -> None:
    from covr_ray.rl.algo import get_prior_weight, learner_metrics, set_prior_weight

    algo, _ = trained
    assert set_prior_weight(algo, 0.0) == 0.0 and get_prior_weight(algo) == 0.0
    assert learner_metrics(algo.train())["learner/prior_weight"] == 0.0
    set_prior_weight(algo, 2.0)
    assert learner_metrics(algo.train())["learner/prior_weight"] == 2.0
    with pytest.raises(LearnerError):
        set_prior_weight(algo, -0.1)


def _learner(algo: Any) -> Any:
    return algo.learner_group._learner


def test_checkpoint_restores_weights_optimizers_lambda_and_replay(trained: Any, tmp_path: Path) -> None:
    from covr_ray.rl.algo import get_prior_weight, replay_buffer, restore_algorithm, save_checkpoint, set_prior_weight

    algo, _ = trained
    set_prior_weight(algo, 1.25)
    path = save_checkpoint(algo, tmp_path / "ckpt")
    assert (path / "covr_replay" / "meta.json").is_file()
    with pytest.raises(CheckpointError):
        save_checkpoint(algo, path)  # never overwritten
    restored = restore_algorithm(path)
    try:
        a, b = _learner(algo), _learner(restored)
        sa, sb = a.module["default_policy"].state_dict(), b.module["default_policy"].state_dict()
        assert sa.keys() == sb.keys() and any(k.startswith("target_critic.") for k in sa) and "log_alpha" in sa
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        for name in ("qf", "policy", "alpha"):
            oa = a.get_optimizer("default_policy", name).state_dict()
            ob = b.get_optimizer("default_policy", name).state_dict()
            assert oa["state"].keys() == ob["state"].keys() and oa["state"]
            for i in oa["state"]:
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    assert torch.equal(torch.as_tensor(oa["state"][i][key]), torch.as_tensor(ob["state"][i][key]))
        assert get_prior_weight(restored) == 1.25
        ra, rb = replay_buffer(algo).core, replay_buffer(restored).core
        assert len(ra) == len(rb) > 0 and ra.stats() == rb.stats()
        sample_a, sample_b = ra.sample(32), rb.sample(32)  # same contents and same RNG state
        assert all(np.array_equal(sample_a[k], sample_b[k]) for k in sample_a)
        restored.train()  # and it keeps training
    finally:
        restored.stop()
        set_prior_weight(algo, 2.0)


def test_checkpoint_from_before_the_episode_sample_path_was_removed_still_restores(trained: Any,
                                                                                   tmp_path: Path) -> None:
    """Algorithm checkpoints written while ``sac.sample_path`` existed pickle a config whose learner-connector
    factory is ``covr_ray.rl.algo.prior_columns_connector`` and whose learner_config_dict has ``sample_path``;
    restore_algorithm unpickles that config. Such a checkpoint is made here from a new one by putting both
    back (a real one written before the change restored and trained the same way)."""
    import pickle

    from covr_ray.rl.algo import (learner_metrics, prior_columns_connector, replay_buffer, restore_algorithm,
                                  save_checkpoint)

    algo, _ = trained
    path = save_checkpoint(algo, tmp_path / "ckpt")
    ctor_file = path / "class_and_ctor_args.pkl"
    ctor = pickle.loads(ctor_file.read_bytes())
    state = ctor["ctor_args_and_kwargs"][0][0]
    assert state["_learner_connector"] is None and "sample_path" not in state["learner_config_dict"]
    state["_learner_connector"] = prior_columns_connector
    state["learner_config_dict"] = {**state["learner_config_dict"], "sample_path": "episodes"}
    ctor_file.write_bytes(pickle.dumps(ctor))
    restored = restore_algorithm(path)
    try:
        assert restored.config._learner_connector is prior_columns_connector
        assert len(replay_buffer(restored)) == len(replay_buffer(algo)) > 0
        metrics = learner_metrics(restored.train())  # trains on replay columns, whatever the old config said
        assert metrics["learner/samples_trained"] > 0 and metrics["learner/prior_coverage"] > 0
    finally:
        restored.stop()


def test_removed_sample_path_option_is_refused_by_name_and_old_run_configs_still_load(caplog) -> None:
    with pytest.raises(ConfigError, match="this field was removed") as err:
        load_config("smoke", overrides=["sac.sample_path=columns"])
    assert err.value.field == "sac.sample_path"
    old = load_config("smoke").to_dict()
    old["sac"]["sample_path"] = "episodes"  # a run directory's config.yaml written before the removal
    caplog.set_level("WARNING", logger="covr_ray")
    assert config_from_dict(old).to_dict() == load_config("smoke").to_dict()
    assert "sac.sample_path='episodes' ignored" in caplog.text


def test_restore_refuses_a_directory_that_is_no_checkpoint(tmp_path: Path) -> None:
    from covr_ray.rl.algo import restore_algorithm

    with pytest.raises(CheckpointError):
        restore_algorithm(tmp_path)


def test_df_rows_are_scored_by_the_learners_critic(trained: Any, tmp_path: Path) -> None:
    """EDDF's q_value ablation in `covr train`: the orchestrator's scoring path with the real critic gives
    exactly the critic's Q on the observations the policy saw (rebuilt from D_f's single frames)."""
    from covr_ray import columns as C
    from covr_ray.df.writer import FilterBuffer
    from covr_ray.df.shards import read_shard
    from covr_ray.select.critic import score_df_shards
    from covr_ray.rl.algo import q_values

    algo, _ = trained
    env = DotEnv({"size": 24})
    obs, _ = env.reset(seed=3)
    observations, actions = [], []
    for t in range(12):
        observations.append(obs)
        actions.append(env.oracle_action() if t % 2 else np.float32([0.7, -0.7]))
        obs, *_ = env.step(actions[-1])
    observations, actions = np.stack(observations), np.stack(actions)
    buf = FilterBuffer(tmp_path / "df", action_dim=2, gamma=0.9)
    buf.add_episode("e", observations[:, -3:].transpose(0, 2, 3, 1), actions, np.zeros(12, np.float32), 0.1)
    shard = buf.flush()
    kept, metrics = score_df_shards([shard], 3, lambda o, a: q_values(algo, o, a, timeout_s=120.0), action_dim=2)
    assert kept == [shard] and metrics["df/q_scored_rows"] == 12
    expected = q_values(algo, observations, actions, timeout_s=120.0)
    assert np.unique(expected.round(5)).size > 1  # the critic tells these rows apart
    # one computation, not two orders: the learner scores the same bytes (rebuilt stacks equal the env's)
    # as one batch of 12 through the same kernels in the same process, and the shard keeps its float32
    # result as is, so no rounding tolerance is needed (a wrong row or frame moves Q by far more)
    np.testing.assert_allclose(read_shard(shard).column(C.Q_VALUE).to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_state_values_are_the_critics_q_of_the_deterministic_action(trained: Any) -> None:
    """The value that bootstraps truncated D_f returns: min(Q1, Q2)(o, tanh(mean(o))) of the learner's networks."""
    from covr_ray.rl.algo import MODULE_ID, q_values, state_values
    from covr_ray.rl.networks import squashed_mean

    algo, _ = trained
    env = DotEnv({"size": 24})
    obs = np.stack([env.reset(seed=s)[0] for s in range(6)])
    module = _learner(algo).module[MODULE_ID]
    with torch.no_grad():
        actions = squashed_mean(module.actor(module.encoder(torch.as_tensor(obs)))).numpy()
    values = state_values(algo, obs, timeout_s=120.0)
    assert values.shape == (6,) and np.unique(values.round(5)).size > 1
    # The same modules on the same 6-row batch, in the same process and thread count, through two entry
    # points: the same kernels in the same order (the actions round-trip float32 -> numpy -> float32 exactly),
    # so the results are equal; the check allows float32 round-off of the output only.
    expected = q_values(algo, obs, actions, timeout_s=120.0)
    np.testing.assert_allclose(values, expected, rtol=4 * np.finfo(np.float32).eps, atol=0)
    with pytest.raises(LearnerError, match="state_values"):
        state_values(algo, obs[:, :3], timeout_s=120.0)


def test_recorder_flags_warmup_rows_and_keeps_the_final_frame_of_truncated_episodes(
        prior_dot_env: str, tmp_path: Path) -> None:
    """Through the real env runner: the warm-up connector's per-step flag reaches D_f (rows of uniform-random
    actions are marked), and a time-limit-truncated episode's last row carries the newest frame of o_T."""
    from covr_ray import columns as C
    from covr_ray.df.shards import read_shard
    from covr_ray.frames import decode_frame
    from covr_envs.rllib import RUN_CONTEXT_KEY
    from covr_ray.df.recorder import ENV_CONFIG_KEY, DfRecorderCallback
    from covr_ray.rl.algo import build_algorithm_config, replay_buffer

    cfg = load_config("smoke", overrides=[
        "sac.hidden_dim=32", "sac.num_filters=8", "sac.feature_dim=16", "sac.batch_size=16",
        f"sac.learning_starts={LEARNING_STARTS}", "sac.rollout_fragment_length=4", "sac.buffer_capacity=500",
        "ray.num_env_runners=0", "env.image_size=24"])
    env_config = {"size": 24, "max_steps": 20,  # D_f: tmp_path/df
                  RUN_CONTEXT_KEY: {ENV_CONFIG_KEY: {"run_dir": str(tmp_path), "gamma": 0.9, "action_dim": 2}}}
    config = build_algorithm_config(cfg, env=prior_dot_env, env_config=env_config)
    config.callbacks(DfRecorderCallback)
    algo = config.build_algo()
    try:
        for _ in range(6):  # 24 agent steps: one whole 20-step episode (truncated by its time limit)
            algo.train()
        core = replay_buffer(algo).core
        first_episode_end = int(np.flatnonzero(core._truncated[:core._size])[0])
        o_t = core._frames[core._next_idx[first_episode_end]].reshape(core.obs_shape)
        taken = core._action[:20].copy()
    finally:
        algo.stop()
    (shard,) = sorted((tmp_path / "df").rglob("df-*.parquet"))
    table = read_shard(shard, kind="df")
    assert table.column(C.STEP_INDEX).to_pylist() == list(range(20)) and first_episode_end == 19
    assert table.column(C.WARMUP).to_pylist() == [t < LEARNING_STARTS for t in range(20)]
    assert np.isnan(table.column(C.BOOTSTRAP_VALUE).to_numpy()).all()  # truncated: the round bootstraps it
    finals = table.column(C.FINAL_FRAME_PNG).to_pylist()
    assert all(f is None for f in finals[:-1]) and finals[-1] is not None
    assert np.array_equal(decode_frame(finals[-1]), o_t[-3:].transpose(1, 2, 0))
    # lora.teach_action=mean (default): warm-up rows keep the uniform action the env got; policy rows hold
    # tanh(mean), not the sampled action (SAC's noise is far above float rounding)
    recorded = np.asarray(table.column(C.RL_ACTION).to_pylist(), np.float32)
    assert np.array_equal(recorded[:LEARNING_STARTS], taken[:LEARNING_STARTS])
    assert np.abs(recorded[LEARNING_STARTS:] - taken[LEARNING_STARTS:]).max(axis=1).min() > 1e-3


def test_warmup_ends_on_a_remote_env_runner_and_stays_ended_after_a_restore(ray_session: None, tmp_path: Path) -> None:
    """The bug this guards against: the warm-up count lived in a module-to-env connector whose state RLlib's
    per-iteration merge replaced by an empty one, so on a remote env runner (every `covr train` run) the
    warm-up never ended and the agent acted uniformly at random for the whole run. Through the orchestrator's
    env path (a remote env runner, the D_f recorder): exactly the first `learning_starts` agent steps are
    warm-up, none after, and none after a checkpoint restore into a freshly built algorithm (a resumed run)."""
    from covr_ray import columns as C
    from covr_ray.df.recorder import ENV_CONFIG_KEY, DfRecorderCallback
    from covr_ray.df.shards import read_shard
    from covr_ray.rl.algo import build_algorithm_config, restore_checkpoint, save_checkpoint

    cfg = load_config("smoke", overrides=[
        "sac.hidden_dim=32", "sac.num_filters=8", "sac.feature_dim=16", "sac.batch_size=16", "sac.learning_starts=24",
        "sac.rollout_fragment_length=8", "sac.buffer_capacity=500", "ray.num_env_runners=1", "env.image_size=24",
        "env.max_episode_steps=8", "prior.enabled=false"])
    df_dir = tmp_path / "df"  # the recorder writes <run_dir>/df/runner-<index>/
    run_context = {"covr": cfg.to_dict(), "run_id": "warmup-test",
                   ENV_CONFIG_KEY: {"run_dir": str(tmp_path), "gamma": 0.9, "action_dim": 2}}

    def build() -> Any:
        config = build_algorithm_config(cfg, run_context=run_context)
        config.callbacks(DfRecorderCallback)
        return config.build_algo()

    def warmup_flags() -> list[bool]:
        shards = sorted(df_dir.rglob("df-*.parquet"), key=lambda p: p.stat().st_mtime_ns)
        return [w for p in shards for w in read_shard(p).column(C.WARMUP).to_pylist()]

    algo = build()
    try:
        for _ in range(6):  # 48 agent steps = 6 whole episodes of 8
            algo.train()
        checkpoint = save_checkpoint(algo, tmp_path / "ckpt")
    finally:
        algo.stop()
    flags = warmup_flags()  # whole episodes only: a crash ends one early, the last one may still be running
    assert len(flags) >= 40 and flags == [t < 24 for t in range(len(flags))], flags
    for path in df_dir.rglob("df-*.parquet"):
        path.unlink()
    again = build()
    try:
        restore_checkpoint(again, checkpoint)
        for _ in range(2):
            again.train()
    finally:
        again.stop()
    flags = warmup_flags()
    assert len(flags) >= 8 and not any(flags)


def test_env_runner_counters_reach_the_sink_namespaced() -> None:
    """learner_metrics passes the run's own env-runner counters (D_f recorder, prior wrappers) to the sink."""
    from covr_ray.rl.algo import learner_metrics

    results = {"env_runners": {"covr_df/rows_written": 120.0, "prior_client/steps": 200.0,
                               "prior_client/with_prior": 18.0, "num_env_steps_sampled_lifetime": 200,
                               "other/thing": 1.0}}
    out = learner_metrics(results)
    assert out["df/rows_written"] == 120.0 and out["prior_client/steps"] == 200.0
    assert out["prior_client/with_prior_frac"] == pytest.approx(0.09)
    assert "other/thing" not in out and out["rollout/agent_steps"] == 200
