"""Quiet, useful logs: repeated library warnings collapse to one line plus a count, real warnings pass,
RLlib's false RLModuleConfig deprecation notice is not printed, progress lines replace tqdm off a terminal."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import covr_ray.log as covr_log
from covr_ray.log import VLLM_REPEATS, ProgressLog, RepeatFilter, setup_worker_logging

REPO = Path(__file__).resolve().parents[1]

PUNICA = "Regarding %s, no matching PunicaWrapper is found; %s will be ignored."
THREADS = "CPU backend doesn't allow to use `torch.set_num_threads` after the thread binding, skip it."


class _Lines(logging.Handler):
    """Collects formatted records (and their levels) of the logger it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def lines(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def lib_logger(request):
    """A real logger with its own handler (no propagation), removed afterwards."""
    logger = logging.getLogger(f"covr_test_logs.{request.node.name}")
    handler = _Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)
    logger.filters.clear()


# --- RepeatFilter -----------------------------------------------------------------------------------------


def test_first_record_passes_repeats_are_counted_and_other_warnings_pass(lib_logger):
    logger, out = lib_logger
    flt = RepeatFilter([r"no matching PunicaWrapper is found"])
    logger.addFilter(flt)
    modules = ["visual.blocks.0.attn.qkv", "visual.blocks.0.attn.proj", "visual.merger.mlp.0", "visual.merger.mlp.2"]
    for name in modules:
        logger.warning(PUNICA, "Qwen2_5_VL", name)
    logger.warning("adapter %s refused: %d%% of its keys unknown", "v3", 40)  # a real warning, with a %
    logger.error("engine call for %d requests failed", 8)

    assert out.lines == [
        "Regarding Qwen2_5_VL, no matching PunicaWrapper is found; visual.blocks.0.attn.qkv will be ignored. "
        + RepeatFilter.NOTE,
        "adapter v3 refused: 40% of its keys unknown",
        "engine call for 8 requests failed",
    ]
    assert flt.counts() == {PUNICA: 4}
    assert flt.pending() == {PUNICA: 3}

    summary = flt.flush(logger)
    assert len(summary) == 1 and out.lines[-1] == summary[0]
    assert "3 more" in summary[0] and "(4 in all)" in summary[0] and "PunicaWrapper" in summary[0]
    assert out.records[-1].levelno == logging.WARNING  # a summary of warnings is a warning
    assert flt.flush(logger) == [] and len(out.lines) == 4  # nothing new: no second summary

    logger.warning(PUNICA, "Qwen2_5_VL", "visual.blocks.1.attn.qkv")  # still counted after a flush
    assert len(out.lines) == 4 and flt.pending() == {PUNICA: 1}


def test_messages_are_told_apart_by_template_and_logger(lib_logger):
    logger, out = lib_logger
    other = logging.getLogger(logger.name + ".child")
    flt = RepeatFilter({r"set_num_threads": "[threads]", r"PunicaWrapper": "[lora]"})
    out.addFilter(flt)  # on the handler: sees the child's records too, as on vLLM's handler
    for _ in range(3):
        logger.warning(THREADS)
        other.warning(THREADS)
        logger.warning(PUNICA, "M", "visual.x")
    assert out.lines == [f"{THREADS} [threads]", f"{THREADS} [threads]", "Regarding M, no matching PunicaWrapper "
                         "is found; visual.x will be ignored. [lora]"]
    summary = flt.summary_lines()
    assert len(summary) == 3 and all("2 more" in line and "(3 in all)" in line for line in summary)
    assert sum(f"the {other.name} message" in line for line in summary) == 1


def test_a_repeat_passes_again_after_summary_every_s(lib_logger, monkeypatch):
    logger, out = lib_logger
    now = [100.0]
    monkeypatch.setattr(covr_log.time, "monotonic", lambda: now[0])
    flt = RepeatFilter([r"set_num_threads"], summary_every_s=600.0)
    logger.addFilter(flt)
    for _ in range(5):
        logger.warning(THREADS)
        now[0] += 60.0
    assert len(out.lines) == 1
    now[0] += 600.0
    logger.warning(THREADS)
    assert len(out.lines) == 2
    assert out.lines[1].startswith(THREADS) and "4 repeats not shown" in out.lines[1] and "6 in all" in out.lines[1]
    logger.warning(THREADS)
    assert len(out.lines) == 2 and flt.pending() == {THREADS: 1}


def test_repeat_filter_is_thread_safe(lib_logger):
    logger, out = lib_logger
    flt = RepeatFilter([r"set_num_threads"])
    logger.addFilter(flt)
    threads = [threading.Thread(target=lambda: [logger.warning(THREADS) for _ in range(200)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out.lines) == 1 and flt.counts() == {THREADS: 800} and flt.pending() == {THREADS: 799}


# --- vLLM -------------------------------------------------------------------------------------------------


def _string_constants(module: str) -> list[str]:
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
@pytest.mark.parametrize("module", ["vllm.v1.worker.cpu_worker", "vllm.lora.model_manager"])
def test_vllm_patterns_match_the_installed_vllm_messages(module):
    """The templates VLLM_REPEATS collapses are still in vLLM's source (else the filter silently stops)."""
    constants = _string_constants(module)
    assert any(re.search(p, c) for p in VLLM_REPEATS for c in constants), (
        f"no VLLM_REPEATS pattern matches a message of {module}: update covr_ray.log.VLLM_REPEATS")


_VLLM_LOGGING = """
import logging, os, sys
for key in ("VLLM_LOGGING_CONFIG_PATH", "COVR_VLLM_LOGGING_CONFIG", "VLLM_CONFIGURE_LOGGING"):
    os.environ.pop(key, None)
from vllm.config.logging import LoggingConfig
from vllm.logger import configure_logging
import covr_ray.log as covr_log
from covr_ray.vlm.loader import vllm_logging_defaults
path = vllm_logging_defaults()
assert path is not None and os.environ["VLLM_LOGGING_CONFIG_PATH"] == path, path
configure_logging(LoggingConfig(log_level="INFO", configure_logging=True, pylogging_config_file=path))
lora = logging.getLogger("vllm.lora.model_manager")
worker = logging.getLogger("vllm.v1.worker.cpu_worker")
for name in ("visual.blocks.0.attn.qkv", "visual.blocks.0.attn.proj", "visual.merger.mlp.0"):
    lora.warning(sys.argv[1], "Qwen2_5_VLForConditionalGeneration", name)
worker.warning("libtcmalloc is not found in LD_PRELOAD.")
worker.warning(sys.argv[2])
worker.warning(sys.argv[2])
covr_log.vllm_repeat_filter().flush(logging.getLogger("vllm"))
print("CONFIG=" + path, file=sys.stderr)
"""


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_logging_config_collapses_repeats_on_vllms_handler():
    """The file handed to vLLM (VLLM_LOGGING_CONFIG_PATH), applied by vLLM's own ``configure_logging`` in a
    fresh process (as in the engine and worker processes; it replaces vLLM's handlers process-wide, so not
    in the test process): vLLM's format, its real warnings pass, the per-module LoRA warning passes once,
    then one summary line."""
    proc = subprocess.run([sys.executable, "-c", _VLLM_LOGGING, PUNICA, THREADS], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads(Path(re.search(r"CONFIG=(.*)", proc.stderr).group(1)).read_text())
    assert config["handlers"]["vllm"]["filters"] == ["covr_repeats"]
    lines = [line for line in proc.stdout.splitlines() if "pid=" in line]  # vLLM's handler writes to stdout
    summaries = [line for line in lines if "covr: " in line and "more of the" in line]
    records = [line for line in lines if line not in summaries]
    assert sum("PunicaWrapper is found" in line for line in records) == 1, lines
    assert sum(THREADS in line for line in records) == 1, lines
    assert any("libtcmalloc is not found" in line for line in records), lines
    assert len(summaries) == 2 and any("2 more" in s and "(3 in all)" in s for s in summaries), summaries
    assert all(re.search(r"pid=\d+\) WARNING .*\[[^\]]+:\d+\]", line) for line in lines), lines  # vLLM's format


def test_vllm_logging_defaults_keep_the_users_own_config(monkeypatch, tmp_path):
    own = tmp_path / "mine.json"
    monkeypatch.setenv("VLLM_LOGGING_CONFIG_PATH", str(own))
    monkeypatch.delenv("COVR_VLLM_LOGGING_CONFIG", raising=False)
    from covr_ray.vlm.loader import vllm_logging_defaults

    assert vllm_logging_defaults() is None
    assert os.environ["VLLM_LOGGING_CONFIG_PATH"] == str(own)
    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH")
    monkeypatch.setenv("VLLM_CONFIGURE_LOGGING", "0")
    assert vllm_logging_defaults() is None and "VLLM_LOGGING_CONFIG_PATH" not in os.environ


def test_no_progress_bars_off_a_terminal(monkeypatch):
    from transformers.utils import logging as hf_logging

    from covr_ray.vlm import loader

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: a Ray actor, a log file
    assert loader.vllm_engine_kwargs("m")["use_tqdm_on_load"] is False
    before = hf_logging.is_progress_bar_enabled()
    with loader._hf_progress_bars(False):
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled() == before


# --- RLlib ------------------------------------------------------------------------------------------------

_BUILD = """
import gymnasium as gym, numpy as np
{imports}
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
spec = RLModuleSpec(module_class={cls}, observation_space=gym.spaces.Box(0, 255, (3, 64, 64), np.uint8),
                    action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                    model_config={{"hidden_dim": 16, "num_filters": 4, "feature_dim": 8}})
MultiRLModuleSpec(rl_module_specs={{"default_policy": spec}}).build()  # as RLlib's learner builds it
spec.build()  # as an env runner builds it
print("BUILT")
"""

_PLAIN_MODULE = """
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
class Plain(TorchRLModule):
    def setup(self):
        import torch
        self.net = torch.nn.Linear(2, 2)
    def _forward(self, batch, **kwargs):
        return {}
"""


def _build_in_fresh_process(imports: str, cls: str) -> str:
    """stderr of a new Python process that builds the module as RLlib does (RLlib's notices are once per
    process, so only a fresh process shows whether one is printed)."""
    code = textwrap.dedent(_BUILD.format(imports=imports, cls=cls))
    env = {**os.environ, "PYTHONWARNINGS": "always::DeprecationWarning"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=env)
    assert proc.returncode == 0 and "BUILT" in proc.stdout, proc.stderr[-3000:]
    return proc.stderr


def test_building_the_pixel_sac_module_prints_no_rlmodule_deprecation():
    stderr = _build_in_fresh_process("from covr_ray.rl.rl_module import PixelSACModule", "PixelSACModule")
    assert "RLModuleConfig" not in stderr and "has been deprecated" not in stderr, stderr[-3000:]


def test_rllib_itself_prints_the_rlmodule_deprecation_for_any_module():
    """Why the notice is skipped: RLlib 2.60 prints it for a module built the non-deprecated way. When this
    fails, RLlib has stopped doing so: remove covr_ray.rl.rl_module._skip_rlmodule_config_notice."""
    stderr = _build_in_fresh_process(_PLAIN_MODULE, "Plain")
    assert "RLModule(config=[RLModuleConfig object])` has been deprecated" in stderr, stderr[-3000:]


# --- progress lines and actor logging ---------------------------------------------------------------------


def test_progress_log_logs_every_interval_and_stops(lib_logger):
    logger, out = lib_logger
    calls = []

    def describe() -> str:
        calls.append(1)
        return f"env steps {len(calls)}"

    with ProgressLog(describe, every_s=0.02, logger=logger) as progress:
        deadline = time.monotonic() + 5.0
        while len(out.lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert out.lines[:3] == ["env steps 1", "env steps 2", "env steps 3"]
    n = len(out.lines)
    time.sleep(0.1)
    assert len(out.lines) == n and not progress._thread.is_alive()


def test_progress_log_survives_a_failing_describe(lib_logger):
    logger, out = lib_logger

    def describe() -> str:
        raise KeyError("schedule")

    with ProgressLog(describe, every_s=0.01, logger=logger) as progress:
        progress._thread.join(timeout=5.0)
    assert len(out.lines) == 1 and "progress lines stop" in out.lines[0]
    with pytest.raises(ValueError):
        ProgressLog(describe, every_s=0)


def test_progress_line_of_a_run(monkeypatch):
    from covr_ray.commands.train import ProgressLine

    job = SimpleNamespace(cfg=SimpleNamespace(schedule=SimpleNamespace(total_env_steps=300)), env_steps=100,
                          schedule=SimpleNamespace(round=1), adapter_version=0, current_lambda=lambda: 2.0)
    now = [10.0]
    monkeypatch.setattr("covr_ray.commands.train.time.monotonic", lambda: now[0])
    line = ProgressLine(job)
    now[0], job.env_steps = 30.0, 140
    assert line() == "env steps 140/300 (47%), 2.0 steps/s, ETA 0:01:20, round 1, adapter v0, lambda 2"
    now[0] = 40.0  # no new steps
    assert "0.0 steps/s, ETA ?" in line()
    job.env_steps = 304
    assert "304/300 (101%)" in line() and "ETA 0:00:00" in line()


def test_setup_worker_logging_is_a_no_op_outside_a_ray_actor():
    root = logging.getLogger("covr_ray")
    before = (root.handlers[:], root.propagate, root.level)
    assert setup_worker_logging() is None
    assert (root.handlers, root.propagate, root.level) == before
