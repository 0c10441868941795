"""The VLM alone as the policy (the paper's VBE row): ``covr eval RUN_DIR --actor vlm [--adapter vN|all]``.

The run's VLM drives the run's env with its parsed answers. It is asked exactly what the prior service
asks (:func:`covr_ray.prior.service.prior_setup`: the env's instruction, codec, guided-decoding regex,
answer budget, family, dtype, and backend: vLLM when importable, else transformers), in this process, with
no Ray. One query every ``every`` agent steps (default ``prior.prior_every``, the prior's own cadence;
``--every-frame``: every step), the last parsed action held in between. An answer the codec cannot parse
keeps the held action (zeros at the start of an episode) and counts as a parse failure.

Adapter versions: ``v0`` is the base model, ``v<N>`` (N >= 1) the run's ``adapters/v<N>`` (complete
versions only, :func:`covr_ray.lora.versions.list_adapters`); ``all`` evaluates v0 and every version, one
engine for all of them (each version is loaded, evaluated, then unloaded). Each version's result is the
policy eval's result dict (:mod:`covr_ray.evaluate`) plus ``actor: "vlm"``, ``adapter_version``,
``query_every``, ``queries``, ``parse_failures``, ``distinct_answers``, ``top_answer``, ``top_answer_share``
(how often the VLM gave its most common answer: 1.0 = the same answer for every frame), ``backend``, ``model``,
``preset``, ``run_seed``, written
atomically to :meth:`RunDir.vlm_eval_result` (``eval/vlm-v<N>.json``)::

    results = evaluate_vlm("runs/driving-hw-0", adapter="all", episodes=10)   # [(result, path), ...]
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from covr_ray.errors import AdapterError, ConfigError
from covr_ray.log import get_logger
from covr_ray.lora.versions import list_adapters
from covr_ray.prior.adapters import AdapterVersion, validate_adapter
from covr_ray.run_dir import RunDir

if TYPE_CHECKING:  # pragma: no cover
    from covr_ray.config import CovrConfig

log = get_logger(__name__)

#: ``result["actor"]`` of a VLM evaluation.
VLM_ACTOR = "vlm"
#: Adapter version of the base model in ``--adapter`` and in result files (the prior service's replay tags
#: use -1, :data:`covr_ray.lora.versions.BASE_VERSION`, for the same thing).
BASE_ADAPTER = 0
_ADAPTER_ARG = re.compile(r"^v(\d{1,9})$")

Selection = list[tuple[int, Optional[AdapterVersion]]]
"""``(version, adapter)`` pairs to evaluate, in order; ``adapter`` None for v0 (the base model)."""


def select_adapters(run: RunDir, adapter: str, max_rank: int) -> Selection:
    """The versions ``--adapter`` names (``all``, ``v0`` or ``v<N>``), each validated; nothing is loaded.

    Raises:
        ConfigError: ``adapter`` is not ``all`` or ``v<N>``.
        AdapterError: ``v<N>`` is not a complete version of the run (the message lists those that are), or
            an adapter the engine could not serve (see :func:`validate_adapter`).
    """
    found = [(v, p) for v, p in list_adapters(run.adapters) if v != BASE_ADAPTER]
    if adapter == "all":
        wanted = [(v, p) for v, p in found]
        selection: Selection = [(BASE_ADAPTER, None)]
    else:
        m = _ADAPTER_ARG.match(adapter) if isinstance(adapter, str) else None
        if m is None:
            raise ConfigError("--adapter", adapter, "all, v0 (the base model) or v<N> (adapters/v<N> of the run)")
        version = int(m.group(1))
        if version == BASE_ADAPTER:
            return [(BASE_ADAPTER, None)]
        wanted = [(v, p) for v, p in found if v == version]
        if not wanted:
            have = ", ".join(["v0 (base model)"] + [f"v{v}" for v, _ in found])
            raise AdapterError(f"adapter v{version} is not in {run.adapters} (a complete version has "
                               f"adapter_config.json); existing versions: {have}")
        selection = []
    return selection + [(v, validate_adapter(p, v, run.adapters, max_rank)) for v, p in wanted]


class VLMPolicy:
    """The run's VLM as an :data:`covr_ray.evaluate.ActFn`, with the prior service's backend in-process.

    Use from one thread. ``act(frame, obs)`` queries on steps 0, ``every``, 2 * ``every``, ... of an
    episode and returns the held action otherwise; call :meth:`reset` at every episode start (``run_episodes``'s
    ``on_episode_start``). :meth:`use_adapter` switches versions; :meth:`close` (or ``with``) frees the engine.

    Args:
        cfg: the run's config (its ``env``, ``prior``, ``lora.rank`` and ``seed``).
        every: agent steps between queries, >= 1; None = ``cfg.prior.prior_every``.

    Raises:
        ConfigError: bad ``every``; the env's prompt, codec or family are invalid.
        DependencyMissingError: ``prior.backend=vllm`` without vLLM. ModelLoadError: the model does not load.
    """

    def __init__(self, cfg: "CovrConfig", every: Optional[int] = None) -> None:
        from covr_envs.registry import resolve_env_spec

        from covr_ray.prior.backend import create_backend
        from covr_ray.prior.service import prior_setup

        every = cfg.prior.prior_every if every is None else every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError("--every", every, "an integer >= 1 (agent steps between VLM queries)")
        spec = resolve_env_spec(cfg.env)
        self.setup = prior_setup(cfg.prior, codec=spec.codec, action_dim=spec.action_dim, task_prompt=spec.prompt,
                                 action_description=spec.action_description, max_lora_rank=cfg.lora.rank,
                                 seed=int(cfg.seed))
        self.every = every
        self.codec = self.setup.codec
        self.backend = create_backend(self.setup.backend_name, self.setup.options)
        self.adapter: Optional[AdapterVersion] = None
        self.queries = 0
        self.parse_failures = 0
        self.answers: Counter[str] = Counter()
        self._held = np.zeros(self.codec.action_dim, np.float32)
        self._step = 0

    @property
    def version(self) -> int:
        """Adapter version answering (0 = base model)."""
        return BASE_ADAPTER if self.adapter is None else self.adapter.version

    def use_adapter(self, adapter: Optional[AdapterVersion]) -> None:
        """Answer with ``adapter`` (None = base model) from now on; the previous adapter is unloaded and the
        counters restart. Raises AdapterError when the engine refuses it (the base model then answers)."""
        if self.adapter is not None and (adapter is None or adapter.version != self.adapter.version):
            previous, self.adapter = self.adapter, None
            self.backend.unload_adapter(previous)
        if adapter is not None and self.adapter is None:
            self.backend.load_adapter(adapter)
            self.adapter = adapter
        self.queries = self.parse_failures = 0
        self.answers = Counter()
        self.reset()

    def reset(self, episode: int = 0) -> None:
        """Episode start: the held action goes back to zeros and the next ``act`` queries."""
        self._held = np.zeros(self.codec.action_dim, np.float32)
        self._step = 0

    def answer(self, frame: np.ndarray) -> tuple[str, Optional[np.ndarray]]:
        """One query: the VLM's text for ``frame`` (H, W, 3) uint8 and its parsed action (None: unparsable)."""
        text = self.backend.generate([frame], [self.setup.instruction], self.adapter)[0]
        return text, self.codec.decode(text)

    def act(self, frame: np.ndarray, obs: Any = None) -> np.ndarray:
        """The action for this step (``obs`` is unused: the VLM sees only ``frame``)."""
        if self._step % self.every == 0:
            text, action = self.answer(frame)
            self.queries += 1
            self.answers[text.strip()] += 1
            if action is None:
                self.parse_failures += 1
            else:
                self._held = np.asarray(action, np.float32)
        self._step += 1
        return self._held.copy()

    def stats(self) -> dict[str, Any]:
        """Counters since the last :meth:`use_adapter`: ``queries``, ``parse_failures``, ``distinct_answers``,
        ``top_answer`` and ``top_answer_share`` (the most common answer text and its share of the queries: 1.0
        is a VLM answering one thing whatever the frame; None without queries)."""
        top = self.answers.most_common(1)
        return {"queries": self.queries, "parse_failures": self.parse_failures,
                "distinct_answers": len(self.answers), "top_answer": top[0][0] if top else None,
                "top_answer_share": top[0][1] / self.queries if top and self.queries else None}

    def close(self) -> None:
        backend, self.backend = getattr(self, "backend", None), None
        if backend is not None:
            backend.close()

    def __enter__(self) -> "VLMPolicy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_vlm_eval_result(run_dir: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` (which must hold ``adapter_version``) to :meth:`RunDir.vlm_eval_result`, atomically.

    Raises:
        ConfigError: no valid ``adapter_version``, or a non-finite mean.
    """
    from covr_ray.evaluate import write_result

    version = result.get("adapter_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ConfigError("result.adapter_version", version, "an integer >= 0 (0 = base model)")
    return write_result(RunDir(Path(run_dir)).vlm_eval_result(version), result)


def evaluate_vlm(run_dir: str | Path, adapter: str = "all", episodes: int = 10, seed: Optional[int] = None,
                 every: Optional[int] = None, *, video: bool = False, video_format: str = "auto",
                 fps: float = 15.0, on_result: Optional[Callable[[dict[str, Any], Path], None]] = None,
                 ) -> list[tuple[dict[str, Any], Path]]:
    """``covr eval --actor vlm``: the run's VLM as the policy on the run's env, per adapter version.

    Every argument and every selected adapter is checked before the model loads. Each version runs the same
    episodes (``seed`` defaults to :func:`covr_ray.evaluate.eval_seed`, like the policy eval) and its result
    is written (:func:`write_vlm_eval_result`) and passed to ``on_result`` as soon as it is done.

    Args:
        adapter: ``all`` (v0 then every complete version), ``v0`` (base model) or ``v<N>``.
        every: agent steps between queries; None = ``prior.prior_every`` of the run.
        video: write each version's first episode to :meth:`RunDir.vlm_eval_video`.

    Returns:
        ``[(result, json_path), ...]`` in version order.

    Raises:
        CheckpointError: ``run_dir`` is not a run directory. ConfigError: bad ``adapter`` / ``episodes`` /
        ``seed`` / ``every`` or run config. AdapterError: an unknown or unservable adapter version.
    """
    from covr_ray.evaluate import check_episodes_seed, eval_seed, run_episodes_with_video

    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    seed = eval_seed(cfg) if seed is None else seed
    check_episodes_seed(episodes, seed)
    every = cfg.prior.prior_every if every is None else every
    selection = select_adapters(run, adapter, cfg.lora.rank)
    ext = None
    if video:
        from covr_ray.video import resolve_format

        ext = resolve_format(video_format)
    out: list[tuple[dict[str, Any], Path]] = []
    with VLMPolicy(cfg, every=every) as policy:
        for version, chosen in selection:
            policy.use_adapter(chosen)
            result = run_episodes_with_video(policy.act, cfg.env, episodes, seed, actor_name=VLM_ACTOR, fps=fps,
                                             video_path=None if ext is None else run.vlm_eval_video(version, ext),
                                             on_episode_start=policy.reset)
            result.update(policy.stats())
            result.update({"adapter_version": version, "query_every": every, "backend": policy.setup.backend_name,
                           "model": cfg.prior.model, "preset": cfg.preset, "run_seed": int(cfg.seed)})
            path = write_vlm_eval_result(run.root, result)
            log.info("eval %s: VLM v%d return %.1f +- %.1f over %d episodes, %d/%d answers unparsed -> %s",
                     run.root, version, result["return_mean"], result["return_std"], episodes,
                     result["parse_failures"], result["queries"], path)
            out.append((result, path))
            if on_result is not None:
                on_result(result, path)
    return out
