"""Preflight: bad paths fail before Ray starts; resource asks a fixed cluster cannot hold fail at once, named."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from covr_ray.config import load_config
from covr_ray.errors import ConfigError
from covr_ray.loop.resources import (AUTOSCALING_ENV, ResourceWatch, check_resources, cluster_can_grow,
                                     node_groups_can_grow, run_asks, status_shows_autoscaler, totals, waiting_line)
from covr_ray.preflight import check_paths, is_local_model_path

# --- paths (no Ray) ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, local", [
    ("Qwen/Qwen2.5-VL-3B-Instruct", False), ("llava-hf/llava-1.5-7b-hf", False), ("gpt2", False),
    ("/nonexistent", True), ("./models/qwen", True), ("../qwen", True), ("~/qwen", True),
    (".cache/tiny-qwen2_5_vl", True), ("models/qwen/v2", True), ("org--x/name", True), ("org/name.git", True),
])
def test_local_path_rule(model: str, local: bool) -> None:
    assert is_local_model_path(model) is local


def test_missing_model_dir_names_prior_model_and_what_to_do() -> None:
    cfg = load_config("smoke", ["prior.model=/nonexistent"])
    with pytest.raises(ConfigError) as info:
        check_paths(cfg)
    err = info.value
    assert err.field == "prior.model" and err.value == "/nonexistent"
    assert "does not exist" in str(err) and "config.json" in str(err) and "download" in str(err)


def test_dir_without_config_json_and_file_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "model"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no config.json") as info:
        check_paths(load_config("smoke", [f"prior.model={empty}"]))
    assert info.value.field == "prior.model"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file") as info:
        check_paths(load_config("smoke", [f"prior.model={weights}"]))
    assert info.value.field == "prior.model"


def test_hub_id_and_tiny_model_dir_pass(tiny_vlm_dir: Path) -> None:
    check_paths(load_config("smoke", ["prior.model=Qwen/Qwen2.5-VL-3B-Instruct"]))
    check_paths(load_config("smoke", [f"prior.model={tiny_vlm_dir}"]))


def test_model_is_not_checked_with_the_prior_off() -> None:
    check_paths(load_config("smoke", ["prior.model=/nonexistent", "prior.enabled=false"]))


def test_run_dir_that_is_a_file_is_refused(tmp_path: Path, tiny_vlm_dir: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file") as info:
        check_paths(load_config("smoke", [f"prior.model={tiny_vlm_dir}", f"run_dir={afile}"]))
    assert info.value.field == "run_dir"
    check_paths(load_config("smoke", [f"prior.model={tiny_vlm_dir}", f"run_dir={tmp_path / 'new' / 'run'}"]))


def test_carla_server_command_must_exist_for_a_local_run(monkeypatch: pytest.MonkeyPatch, tiny_vlm_dir: Path) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    base = ["env.name=carla-hw", f"prior.model={tiny_vlm_dir}"]
    with pytest.raises(ConfigError) as info:
        check_paths(load_config("smoke", base + ["env.carla.server_command=/nonexistent/CarlaUE4.sh -opengl"]))
    assert info.value.field == "env.carla.server_command" and "not an executable" in str(info.value)
    with pytest.raises(ConfigError, match="does not parse"):
        check_paths(load_config("smoke", base + ["env.carla.server_command=echo 'unclosed"]))
    check_paths(load_config("smoke", base + ["env.carla.server_command=sleep 1"]))
    # on a cluster the server starts on the env runners' nodes: only the command line is checked here
    check_paths(load_config("smoke", base + ["env.carla.server_command=/nonexistent/CarlaUE4.sh",
                                             "ray.address=auto"]))


def test_covr_train_fails_before_ray_and_before_the_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import ray

    from covr_ray.cli import main

    assert not ray.is_initialized()
    root = tmp_path / "run"
    code = main(["train", "--preset", "smoke", "--run-dir", str(root), "--no-progress",
                 "--set", "prior.model=/nonexistent"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "prior.model" in err and "/nonexistent" in err and "Traceback" not in err
    assert not ray.is_initialized()
    assert not root.exists()


def test_covr_run_setup_checks_paths_before_the_lock_and_ray(tmp_path: Path) -> None:
    import ray

    from covr_ray.loop.orchestrator import CovrRun

    empty = tmp_path / "model"
    empty.mkdir()
    run = CovrRun.new(load_config("smoke", [f"prior.model={empty}", f"run_dir={tmp_path / 'run'}"]), progress=False)
    try:
        with pytest.raises(ConfigError, match="no config.json") as info:
            run.setup()
        assert info.value.field == "prior.model"
        assert not ray.is_initialized()
        assert run.run_dir._lock_fd is None
    finally:
        run.close()
        if ray.is_initialized():  # only when the check failed to stop setup: leave no Ray for later tests
            ray.shutdown()


# --- resources: pure parts ---------------------------------------------------------------------------------


def test_asks_add_up_what_ray_reserves() -> None:
    cfg = load_config("smoke", ["ray.num_env_runners=4"])
    assert totals(run_asks(cfg)) == {"CPU": 4 * 0.5 + 0.5 + 0.5, "GPU": 0.0}
    off = load_config("smoke", ["ray.num_env_runners=4", "prior.enabled=false", "ray.num_cpus_prior=64"])
    assert totals(run_asks(off)) == {"CPU": 2.0, "GPU": 0.0}  # no prior replicas, no LoRA trainer
    gpu = load_config("carla-hw", ["ray.prior_replicas=2"])
    assert totals(run_asks(gpu))["GPU"] == pytest.approx(0.25 + 2 * 0.5 + 0.25)


def test_autoscaler_rules() -> None:
    class Group:
        def __init__(self, min_count: int, max_count: int) -> None:
            self.resources, self.min_count, self.max_count = {"CPU": 8}, min_count, max_count

    assert node_groups_can_grow([Group(1, 1), Group(0, 10)])
    assert node_groups_can_grow([Group(0, -1)])
    assert not node_groups_can_grow([Group(2, 2), Group(0, 0)])
    assert not status_shows_autoscaler(["node_ae3f19b355a5"], pending=0)  # a local ray.init() / ray start
    assert status_shows_autoscaler(["gpu_head"], pending=0)  # ray up names its nodes
    assert status_shows_autoscaler(["node_ae3f19b355a5"], pending=1)
    assert waiting_line({"CPU": 3.0, "GPU": 0.0}, {"CPU": 2.0, "GPU": 0.0}) == "waiting for 3 CPUs (have 2)"


# --- resources: against a local Ray of 2 CPUs --------------------------------------------------------------


def test_local_ray_is_fixed_size(ray_session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTOSCALING_ENV, raising=False)
    grows, why = cluster_can_grow()
    assert grows is False, why


def test_smoke_as_shipped_fits(ray_session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTOSCALING_ENV, raising=False)
    assert check_resources(load_config("smoke")) is None


def test_too_many_env_runners_fail_at_once_naming_fields_and_totals(ray_session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTOSCALING_ENV, raising=False)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        check_resources(load_config("smoke", ["ray.num_env_runners=4"]))
    assert time.monotonic() - t0 < 30
    err, text = info.value, str(info.value)
    assert err.field == "ray.num_env_runners" and err.value == 4
    assert "ray.num_cpus_per_env_runner" in text and "3 CPUs" in text and "2 CPUs" in text
    assert "--set ray.num_env_runners=2" in text  # what fits: 2 x 0.5 + 0.5 + 0.5 = 2


def test_gpu_asks_on_a_cpu_cluster_fail(ray_session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTOSCALING_ENV, raising=False)
    with pytest.raises(ConfigError) as info:
        check_resources(load_config("smoke", ["ray.num_gpus_prior=1"]))
    assert info.value.field == "ray.num_gpus_prior" and "0 GPUs" in str(info.value)


def test_setup_refuses_before_any_actor_starts(ray_session, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               tiny_vlm_dir: Path) -> None:
    import ray

    from covr_ray.loop.orchestrator import CovrRun

    def started(*_args: object, **_kwargs: object) -> None:  # a missed check fails here, instead of hanging
        raise AssertionError("setup went on to start actors or env runners")

    monkeypatch.delenv(AUTOSCALING_ENV, raising=False)
    monkeypatch.setattr(CovrRun, "_start_vlm_actors", started)
    monkeypatch.setattr("covr_ray.rl.algo.build_algorithm_config", started)
    cfg = load_config("smoke", [f"prior.model={tiny_vlm_dir}", f"run_dir={tmp_path / 'run'}",
                                "ray.num_env_runners=4"])
    run = CovrRun.new(cfg, progress=False)
    try:
        with pytest.raises(ConfigError, match="ray.num_env_runners"):
            run.setup()
        assert run.prior == [] and run.lora is None and run.algo is None
        assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("covr-")]
    finally:
        run.close()


def test_growing_cluster_logs_waiting_lines_instead(ray_session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTOSCALING_ENV, "1")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("covr_ray.loop.resources")
    logger.addHandler(handler)
    watch = check_resources(load_config("smoke", ["ray.num_env_runners=4"]), log_every_s=0.05)
    try:
        assert isinstance(watch, ResourceWatch)
        deadline = time.monotonic() + 10
        while len(records) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        lines = [r.getMessage() for r in records]
        assert len(lines) >= 2, lines  # periodic, not once
        assert all("waiting for 3 CPUs (have 2)" in line for line in lines)
        assert not watch.fitted
    finally:
        if watch is not None:
            watch.stop()
        logger.removeHandler(handler)
    assert not watch.running
    assert check_resources(load_config("smoke")) is None  # nothing short: no watch


def test_watch_ends_once_the_cluster_holds_the_asks(ray_session) -> None:
    watch = ResourceWatch({"CPU": 1.0, "GPU": 0.0}, "test", every_s=0.05, give_up_s=10).start()
    watch._thread.join(timeout=10)
    assert watch.fitted and not watch.running

