"""The metrics sink: namespaced keys only; CSV, TensorBoard and offline W&B all receive the values."""

from __future__ import annotations

import math

import pytest

from covr_ray.config import LoggingSection
from covr_ray.errors import MetricsError
from covr_ray.metrics import RESUMED_KEY, MetricsSink, namespaced, ray_metric_name, read_csv_metrics, wandb_mode


def test_keys_must_be_namespaced(tmp_path):
    with MetricsSink(tmp_path, LoggingSection(wandb=False, tensorboard=False)) as sink:
        with pytest.raises(MetricsError, match="'loss'"):
            sink.log({"loss": 1.0}, step=0)
        with pytest.raises(MetricsError):
            sink.log({"Learner/loss": 1.0}, step=0)
        sink.log({"learner/critic_loss": 1.5, "eddf/keep_frac": 0.25}, step=10)
    rows = read_csv_metrics(tmp_path / "metrics.csv")
    assert rows == {"learner/critic_loss": [(10, 1.5)], "eddf/keep_frac": [(10, 0.25)]}


def test_namespaced_helper_and_ray_names():
    assert namespaced("lora", {"loss": 1, "lora/adapter_version": 3}) == {"lora/loss": 1, "lora/adapter_version": 3}
    assert ray_metric_name("prior/latency_ms") == "covr_prior_latency_ms"


def test_csv_appends_across_sinks_and_keeps_nan(tmp_path):
    cfg = LoggingSection(wandb=False, tensorboard=False)
    with MetricsSink(tmp_path, cfg) as sink:
        sink.log({"eval/return": 1.0}, step=1)
    with MetricsSink(tmp_path, cfg) as sink:  # a resumed run appends
        sink.log({"eval/return": float("nan")}, step=2)
    rows = read_csv_metrics(tmp_path / "metrics.csv")["eval/return"]
    assert rows[0] == (1, 1.0) and rows[1][0] == 2 and math.isnan(rows[1][1])


def test_a_resumed_run_is_read_as_its_latest_timeline_and_every_row_stays_in_the_file(tmp_path):
    """Stopped after its checkpoint at 200, the first run logged 300 and a round at 350; the resumed run starts
    at 200 (RESUMED_KEY 1) and logs 300 and its round at 360. Readers see one timeline; the raw file keeps all."""
    cfg = LoggingSection(wandb=False, tensorboard=False)
    with MetricsSink(tmp_path, cfg) as sink:
        sink.log({RESUMED_KEY: 0.0}, step=0)  # a fresh start: no cut
        for step in (100, 200, 300):
            sink.log({"eval/return": float(step)}, step=step)
        sink.log({"lora/heldout_action_err_after": 0.5}, step=350)
    with MetricsSink(tmp_path, cfg) as sink:
        sink.log({RESUMED_KEY: 1.0}, step=200)
        sink.log({"eval/return": 301.0}, step=300)
        sink.log({"lora/heldout_action_err_after": 0.4}, step=360)
    latest = read_csv_metrics(tmp_path / "metrics.csv")
    assert latest["eval/return"] == [(100, 100.0), (200, 200.0), (300, 301.0)]
    assert latest["lora/heldout_action_err_after"] == [(360, 0.4)]  # one value for the round, not two
    assert latest[RESUMED_KEY] == [(0, 0.0), (200, 1.0)]
    every = read_csv_metrics(tmp_path / "metrics.csv", latest_timeline=False)
    assert [s for s, _ in every["eval/return"]] == [100, 200, 300, 300]
    assert every["lora/heldout_action_err_after"] == [(350, 0.5), (360, 0.4)]


def test_tensorboard_events_are_written(tmp_path):
    with MetricsSink(tmp_path, LoggingSection(wandb=False, csv=False)) as sink:
        for step in range(3):
            sink.log({"learner/actor_loss": float(step)}, step=step)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("learner/actor_loss")] == [0.0, 1.0, 2.0]


def test_wandb_offline_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = LoggingSection(wandb=True, tensorboard=False, csv=False)
    assert wandb_mode(cfg) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(cfg) == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    with MetricsSink(tmp_path, cfg, run_name="t", config={"a": 1}) as sink:
        sink.log({"prior/qps": 12.0}, step=5)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_run_label_is_the_runs_id_else_the_directory_name(tmp_path):
    quiet = LoggingSection(wandb=False, tensorboard=False, csv=False)
    bare = tmp_path / "my-run"
    with MetricsSink(bare, quiet, ray_metrics=False) as sink:
        assert sink.run_label == "my-run"
    assert not (bare / "run_id").exists()  # reading the label writes nothing into the run
    with_id = tmp_path / "other"
    with_id.mkdir()
    (with_id / "run_id").write_text("abc123\n")
    with MetricsSink(with_id, quiet, ray_metrics=False) as sink:
        assert sink.run_label == "abc123"
    with MetricsSink(with_id, quiet, ray_metrics=False, run_label="given") as sink:
        assert sink.run_label == "given"
