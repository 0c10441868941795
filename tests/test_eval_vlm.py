"""The VLM alone as the policy (`covr eval --actor vlm`), on the real embedded driving env with the tiny
Qwen2.5-VL on its transformers backend, a LoRA adapter from a short round (its answers parse) and a random
one (A and B random: answers change but rarely parse).

One run directory for the module: `--adapter all --json` runs once (fixture ``all_records``); the tests
that write other results use copies of it. Episodes are 5 agent steps of a 32-pixel env.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from covr_ray.cli import main
from covr_ray.errors import AdapterError, ConfigError
from covr_ray.evaluate import run_episodes
from covr_ray.lora.random_adapter import build_random_adapter
from covr_ray.run_dir import RunDir
from covr_ray.vlm.policy import VLMPolicy, evaluate_vlm, select_adapters
from support.policies import make_run_dir


EVERY = 2
SEED = 7
EPISODES = 2
RECORD_KEYS = {"env", "actor", "episodes", "seed", "returns", "return_mean", "return_std", "lengths", "length_mean",
               "length_std", "episode_env_steps", "distances_m", "distance_m_mean", "distance_m_std", "wall_s",
               "adapter_version", "query_every", "queries", "parse_failures", "distinct_answers", "top_answer",
               "top_answer_share", "backend", "model", "preset", "run_seed", "json_path"}


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


def _overrides(model: str) -> list[str]:
    return [f"prior.model={model}", "prior.backend=transformers", f"prior.prior_every={EVERY}", "lora.rank=8"]


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory: pytest.TempPathFactory, tiny_vlm_dir: Path) -> tuple[Path, Any]:
    """A run (config + policy) with adapters v1 (a short LoRA round: its answers parse, so its actions differ
    from the base model's) and v2 (random: answers change but rarely parse), and an incomplete v3 (no
    adapter_config.json)."""
    from covr_envs.registry import resolve_env_spec
    from covr_ray.config import LoRASection
    from covr_ray.lora.trainer import LoRATrainer
    from covr_ray.prior.codecs import get_codec
    from covr_ray.prior.prompts import build_instruction
    from covr_ray.select.kept import kept_set_from_arrays

    root = tmp_path_factory.mktemp("runs")
    run_dir, cfg, _ = make_run_dir(root, overrides=_overrides(str(tiny_vlm_dir)))
    adapters = RunDir(run_dir).adapters
    spec = resolve_env_spec(cfg.env)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(8)]
    targets = np.array([[-1.0, 1.0], [1.0, -1.0]] * 4)  # "turn left, accelerate hard" / "turn right, brake hard"
    kept = kept_set_from_arrays(root / "kept", frames, targets)
    lora = LoRASection(rank=8, alpha=16, dropout=0.0, learning_rate=5e-3, epochs=100, batch_size=8, max_steps=40,
                       heldout_frac=0.0)
    instruction = build_instruction(spec.prompt, spec.action_description, get_codec(spec.codec, spec.action_dim))
    trainer = LoRATrainer(str(tiny_vlm_dir), lora, spec.codec, spec.action_dim, instruction, adapters, progress=False)
    assert trainer.train_round(kept.path).version == 1
    build_random_adapter(str(tiny_vlm_dir), adapters / "v2", rank=8, seed=2)
    (adapters / "v3").mkdir()  # a version being written: not complete, never evaluated
    return run_dir, cfg


@pytest.fixture(scope="module")
def all_records(vlm_run: tuple[Path, Any]) -> tuple[list[dict[str, Any]], float]:
    """`covr eval RUN --actor vlm --adapter all --json`: its stdout lines as JSON, and its wall time."""
    import contextlib
    import io

    run_dir, _ = vlm_run
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(["eval", str(run_dir), "--actor", "vlm", "--adapter", "all", "--episodes", str(EPISODES),
                     "--seed", str(SEED), "--json"])
    wall = time.perf_counter() - start
    assert code == 0
    print(f"covr eval --actor vlm --adapter all: {wall:.1f} s")
    return [json.loads(line) for line in out.getvalue().splitlines()], wall


def test_all_prints_one_record_per_adapter_version(vlm_run: tuple[Path, Any],
                                                   all_records: tuple[list[dict[str, Any]], float]) -> None:
    run_dir, cfg = vlm_run
    records, _ = all_records
    assert [r["adapter_version"] for r in records] == [0, 1, 2]
    for r in records:
        assert set(r) == RECORD_KEYS, set(r) ^ RECORD_KEYS
        assert r["actor"] == "vlm" and r["query_every"] == EVERY and r["backend"] == "transformers"
        assert r["episodes"] == EPISODES and r["seed"] == SEED and r["model"] == cfg.prior.model
        assert r["queries"] == sum(math.ceil(n / EVERY) for n in r["lengths"])
        assert 0 <= r["parse_failures"] <= r["queries"]
        assert r["return_mean"] == pytest.approx(np.mean(r["returns"])) and r["distance_m_mean"] > 0
        path = Path(r["json_path"])
        assert path == RunDir(run_dir).vlm_eval_result(r["adapter_version"])
        stored = json.loads(path.read_text())
        assert stored == {k: v for k, v in r.items() if k != "json_path"}


def test_the_adapter_changes_the_actions_and_unparsed_answers_hold(vlm_run: tuple[Path, Any]) -> None:
    run_dir, cfg = vlm_run
    run = RunDir(run_dir)
    selection = dict(select_adapters(run, "all", cfg.lora.rank))
    assert sorted(selection) == [0, 1, 2] and selection[0] is None
    with VLMPolicy(cfg, every=1) as policy:
        answers: list[str] = []
        asked = policy.answer

        def answer(frame: np.ndarray) -> tuple[str, Any]:
            text, action = asked(frame)
            answers.append(text)
            return text, action

        policy.answer = answer  # type: ignore[method-assign]  # records the real answers, changes nothing

        def rollout(version: int) -> tuple[list[np.ndarray], list[str], dict[str, Any]]:
            policy.use_adapter(selection[version])
            actions: list[np.ndarray] = []
            answers.clear()

            def act(frame: np.ndarray, obs: np.ndarray) -> np.ndarray:
                actions.append(policy.act(frame, obs))
                return actions[-1]

            result, _ = run_episodes(act, cfg.env, EPISODES, SEED, actor_name="vlm", on_episode_start=policy.reset)
            return actions, list(answers), result

        base, base_texts, _ = rollout(0)
        tuned, tuned_texts, _ = rollout(1)
        assert base_texts != tuned_texts
        assert not _same(base, tuned), "adapter v1 took the base model's actions"

        # A query every 2 steps; an answer the codec cannot parse holds the previous action, zeros at reset.
        policy.every = EVERY
        actions, texts, result = rollout(2)
        expected, k = [], 0
        for length in result["lengths"]:
            held = np.zeros(2, np.float32)
            for t in range(length):
                if t % EVERY == 0:
                    decoded = policy.codec.decode(texts[k])
                    k += 1
                    held = held if decoded is None else decoded
                expected.append(held)
        assert k == len(texts) == policy.queries == sum(math.ceil(n / EVERY) for n in result["lengths"])
        assert policy.parse_failures == sum(policy.codec.decode(t) is None for t in texts)
        counts = Counter(t.strip() for t in texts)  # the answers the stats summarise
        top_text, top_n = counts.most_common(1)[0]
        stats = policy.stats()
        assert stats["distinct_answers"] == len(counts) and stats["top_answer_share"] == top_n / len(texts)
        assert counts[stats["top_answer"]] == top_n
        assert _same(actions, expected)
        assert policy.version == 2
    assert policy.backend is None  # closed


def test_every_frame_queries_every_step_and_writes_a_video(vlm_run: tuple[Path, Any], tmp_path: Path,
                                        all_records: tuple[list[dict[str, Any]], float],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "run"
    shutil.copytree(vlm_run[0], copy)
    assert main(["eval", str(copy), "--actor", "vlm", "--adapter", "v1", "--every-frame", "--episodes", "1",
                 "--seed", str(SEED), "--json", "--video", "--video-format", "gif"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["adapter_version"] == 1 and record["query_every"] == 1
    steps = record["lengths"][0]
    assert record["queries"] == steps >= 2  # one query per agent step
    assert record["video"] == str(RunDir(copy).vlm_eval_video(1, "gif"))
    from PIL import Image

    with Image.open(record["video"]) as gif:
        assert gif.format == "GIF" and gif.n_frames == steps + 1
    default = all_records[0][1]  # v1 with a query every prior_every = 2 steps
    assert default["queries"] == sum(math.ceil(n / EVERY) for n in default["lengths"]) < sum(default["lengths"])


def test_unknown_adapter_and_bad_arguments_fail_before_the_model_loads(
        vlm_run: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A run whose model does not exist: any error but the argument's would be a ModelLoadError.
    run_dir, _, _ = make_run_dir(tmp_path, overrides=_overrides(str(tmp_path / "no-such-model")))
    shutil.copytree(RunDir(vlm_run[0]).adapters, RunDir(run_dir).adapters)
    with pytest.raises(AdapterError, match=r"adapter v9 is not in .*existing versions: v0 \(base model\), v1, v2$"):
        evaluate_vlm(run_dir, adapter="v9")
    with pytest.raises(ConfigError, match="--adapter"):
        evaluate_vlm(run_dir, adapter="latest")
    with pytest.raises(ConfigError, match="--episodes"):
        evaluate_vlm(run_dir, adapter="v1", episodes=0)
    with pytest.raises(ConfigError, match="--every"):
        evaluate_vlm(run_dir, adapter="v0", every=0)
    assert not RunDir(run_dir).vlm_eval_results()

    assert main(["eval", str(run_dir), "--actor", "vlm", "--adapter", "v9"]) == 2
    assert "existing versions: v0 (base model), v1, v2" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--adapter", "v1"]) == 2  # the policy actor has no adapter
    assert "only with --actor vlm" in capsys.readouterr().err


def test_report_writes_the_vlm_table_and_plot(vlm_run: tuple[Path, Any],
                                              all_records: tuple[list[dict[str, Any]], float],
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    runs = tmp_path / "runs"
    shutil.copytree(vlm_run[0], runs / vlm_run[0].name)
    records = {r["adapter_version"]: r for r in all_records[0]}
    # Only VLM results (no policy evaluation yet): the report still has its VLM table.
    assert main(["report", str(runs), "--reps", "20"]) == 0
    text = capsys.readouterr().out
    assert "## VLM per fine-tune iteration" in text and "| v0 (base) | v1 | v2 |" in text
    out = runs / "report"
    rows = list(csv.DictReader((out / "vlm.csv").open()))
    assert [int(r["adapter_version"]) for r in rows] == [0, 1, 2]
    for row in rows:
        rec = records[int(row["adapter_version"])]
        assert float(row["return_mean"]) == pytest.approx(rec["return_mean"]) and float(row["return_std"]) == 0.0
        assert int(row["queries"]) == rec["queries"] and int(row["parse_failures"]) == rec["parse_failures"]
        assert float(row["parse_failure_share"]) == pytest.approx(rec["parse_failures"] / rec["queries"])
    png = out / "vlm" / "driving-hw.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # With a policy evaluation too: both tables in results.md.
    assert main(["eval", str(runs / vlm_run[0].name), "--episodes", "1"]) == 0
    capsys.readouterr()
    assert main(["report", str(runs), "--reps", "20", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(summary["runs"]) == 1 and [r["adapter_version"] for r in summary["vlm"]] == [0, 1, 2]
    results = (out / "results.md").read_text()
    assert results.index("# COVR results") < results.index("## VLM per fine-tune iteration")
    assert (out / "vlm.md").is_file() and (out / "curves" / "driving-hw.png").is_file() and png.is_file()
