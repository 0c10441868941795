"""The VLM prior service: a named Ray actor that batches (frame, prompt) queries from all env actors.

How to run (what ``covr train`` does; tests and ``covr bench prior`` do the same on the tiny model)::

    handles = start_prior_replicas(cfg, run_id="r0", adapter_dir=run_dir / "adapters",
                                   codec="driving", action_dim=2, task_prompt=spec.prompt,
                                   action_description=spec.action_description)
    ref = handles[0].query.remote(frame)                # frame: (H, W, 3) uint8
    answer = ray.get(ref, timeout=cfg.prior.timeout_s)  # {"text", "action", "version", "latency_ms", ...}
    ray.get(handles[0].load_adapter.remote(str(adapter_path(adapter_dir, 1)), 1), timeout=120)

Batching: a request waits at most ``max_wait_ms`` for others to join its batch; a batch holds at most
``max_batch_size`` requests and is answered by one engine call. Requests that waited longer than
``timeout_s`` are dropped unanswered (their env steps carry no prior). Every answer says which adapter
version produced it. Adapters are swapped between batches: no query fails during a swap.

Faults: the actor is created with ``max_restarts`` (``ray.max_actor_restarts``) and no task retries;
queries in flight when it dies fail on the caller's side, which treats them as "no prior" (see
:mod:`covr_ray.prior.client`). On restart ``__init__`` runs again and reloads the newest adapter of the
run's adapter directory.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from covr_ray.config import CovrConfig, PriorSection
from covr_ray.errors import AdapterError, ConfigError, PriorServiceError
from covr_ray.log import get_logger, setup_worker_logging
from covr_ray.lora.versions import list_adapters
from covr_ray.prior.adapters import AdapterRegistry
from covr_ray.prior.backend import BackendOptions, backend_options, create_backend, resolve_backend
from covr_ray.prior.codecs import ActionCodec, get_codec
from covr_ray.prior.metrics import PriorStats
from covr_ray.prior.prompts import build_instruction, check_frame

log = get_logger(__name__)

#: Answer statuses: ``ok`` (action parsed), ``unparsed`` (text without an action), ``timeout`` (dropped
#: before the engine saw it), ``error`` (the engine call failed).
STATUSES = ("ok", "unparsed", "timeout", "error")


def prior_actor_name(run_id: str, replica: int = 0) -> str:
    """Ray actor name of replica ``replica`` of run ``run_id``'s prior service."""
    if not run_id or not isinstance(run_id, str):
        raise ConfigError("run_id", run_id, "a non-empty string")
    return f"covr-prior-{run_id}-{replica}"


def answer_tokens(cfg: PriorSection, guided: bool, max_answer_chars: int) -> int:
    """Token budget of one answer: the config's, raised under guided decoding so the longest canonical
    answer (at most one token per character, plus two for a leading-space token and end of sequence) fits."""
    return max(cfg.max_new_tokens, max_answer_chars + 2) if guided else cfg.max_new_tokens


@dataclass(frozen=True)
class PriorSetup:
    """What the service resolves from the config and the env before it starts its engine; built by
    :func:`prior_setup`, shared with ``covr eval --actor vlm`` (:mod:`covr_ray.vlm.policy`), so both ask the
    same model the same question the same way."""

    codec: ActionCodec
    instruction: str
    """The text beside every frame (:func:`~covr_ray.prior.prompts.build_instruction` of the env's prompt)."""
    family: str
    backend_name: str
    """``vllm`` or ``transformers`` (``auto`` resolved)."""
    guided: bool
    """Answers constrained to the codec's regex (vLLM with ``prior.guided_decoding``)."""
    max_new_tokens: int
    options: BackendOptions


def prior_setup(cfg: PriorSection, *, codec: str, action_dim: int, task_prompt: str, action_description: str,
                max_lora_rank: int, seed: int) -> PriorSetup:
    """Codec, instruction, family, backend and engine options of a prior for an env (nothing is loaded
    but the model's config, to read its family).

    Raises:
        CodecError: unknown codec or action dimension. ConfigError: empty task prompt, unknown family.
        DependencyMissingError: ``prior.backend=vllm`` without vLLM.
    """
    from covr_ray.vlm.loader import resolve_family

    action_codec = get_codec(codec, action_dim)
    instruction = build_instruction(task_prompt, action_description, action_codec)
    family = resolve_family(cfg.model, cfg.family)
    backend_name = resolve_backend(cfg.backend)
    guided = cfg.guided_decoding and backend_name == "vllm"
    max_new_tokens = answer_tokens(cfg, guided, action_codec.max_answer_chars)
    options = backend_options(cfg, family=family, regex=action_codec.regex if guided else None,
                              max_new_tokens=max_new_tokens, max_lora_rank=max_lora_rank, seed=seed)
    return PriorSetup(action_codec, instruction, family, backend_name, guided, max_new_tokens, options)


@dataclass
class _Pending:
    frame: np.ndarray
    instruction: str
    enqueued: float
    future: "asyncio.Future[dict[str, Any]]"


class PriorService:
    """Body of the prior-service Ray actor (see :func:`start_prior_service`); all public methods are async.

    Args:
        cfg: the run's prior section.
        codec / action_dim: the env's action codec (text <-> action in [-1, 1]).
        task_prompt / action_description: the env's prompt and action semantics, told to the VLM.
        adapter_dir: the run's adapter directory; only adapters inside it are accepted.
        max_lora_rank: the largest LoRA rank the engine serves (``lora.rank``).
        seed: sampling seed.
        replica: replica index (metrics tag).
        run_id: the run's id (the metrics' ``run`` tag).
    """

    def __init__(self, cfg: PriorSection, *, codec: str, action_dim: int, task_prompt: str,
                 action_description: str, adapter_dir: str, max_lora_rank: int = 128, seed: int = 0,
                 replica: int = 0, run_id: str = "") -> None:
        setup_worker_logging()  # in a Ray actor: its INFO lines (start, adapter swaps) reach the run log
        cfg.validate("prior")
        self.cfg = cfg
        setup = prior_setup(cfg, codec=codec, action_dim=action_dim, task_prompt=task_prompt,
                            action_description=action_description, max_lora_rank=max_lora_rank, seed=seed)
        self.codec = setup.codec
        self.action_description = action_description
        self.default_instruction = setup.instruction
        self._instructions: dict[str, str] = {}
        self.family = setup.family
        self.backend_name = setup.backend_name
        self.max_new_tokens = setup.max_new_tokens
        options = setup.options
        self.replica = replica
        self.stats = PriorStats(replica=str(replica), run=run_id)
        self.registry = AdapterRegistry(adapter_dir, cfg.max_adapters, max_lora_rank)
        # One engine thread: engine calls (generate, add/remove adapter) never overlap.
        self._engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="covr-prior-engine")
        t0 = time.perf_counter()
        self.backend = self._engine.submit(create_backend, self.backend_name, options).result()
        self.start_s = time.perf_counter() - t0
        self.restored = self._engine.submit(self._restore_newest_adapter).result()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wake: Optional[asyncio.Event] = None
        self._loop_task: Optional[asyncio.Task[None]] = None
        self._swap_lock: Optional[asyncio.Lock] = None
        self._http: Any = None
        log.info("prior service replica %d: %s backend, %s family, %s, adapter v%d, started in %.1f s",
                 replica, self.backend_name, self.family, self.codec, self.registry.version, self.start_s)
        try:  # inside a Ray async actor __init__ runs on the actor's event loop: start serving now
            asyncio.get_running_loop()
            self._ensure_loop()
        except RuntimeError:
            pass  # plain object (no loop yet): started by the first call

    # -- setup ----------------------------------------------------------------------------------------

    def _restore_newest_adapter(self) -> Optional[int]:
        """After a (re)start: serve the newest adapter of the run that loads; older ones are fallbacks."""
        for version, path in reversed(list_adapters(self.registry.adapter_dir)):
            try:
                adapter = self.registry.check(path, version)
                self.backend.load_adapter(adapter)
            except AdapterError as exc:
                log.warning("prior service: adapter %s not restored: %s", path, exc)
                self.stats.adapter(self.registry.version, failed=True)
                continue
            self.registry.commit(adapter)
            self.stats.adapter(version)
            return version
        return None

    def _ensure_loop(self) -> None:
        if self._loop_task is not None:
            return
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._swap_lock = asyncio.Lock()
        self._loop_task = loop.create_task(self._batch_loop())
        if self.cfg.http_port is not None and self._http is None:
            from covr_ray.prior.http import PriorHTTPServer

            self._http = PriorHTTPServer(self, self.cfg.http_host, self.cfg.http_port)
            loop.create_task(self._http.start())

    def _instruction(self, prompt: Optional[str]) -> str:
        if prompt is None:
            return self.default_instruction
        text = self._instructions.get(prompt)
        if text is None:
            text = build_instruction(prompt, self.action_description, self.codec)
            if len(self._instructions) < 256:
                self._instructions[prompt] = text
        return text

    # -- queries --------------------------------------------------------------------------------------

    async def query(self, frame: np.ndarray, prompt: Optional[str] = None,
                    sent_at: Optional[float] = None) -> dict[str, Any]:
        """Answer one query (batched with others).

        Args:
            frame: (H, W, 3) uint8, the single RGB frame the VLM sees.
            prompt: task prompt; None = the env's prompt given at start.
            sent_at: caller's ``time.time()`` when it sent the query; a query that already waited longer
                than ``timeout_s`` (e.g. queued while the actor restarted) is answered "timeout" at once.

        Returns:
            ``{"status", "text", "action", "version", "latency_ms", "batch_size"}``: ``action`` is a list
            of ``action_dim`` floats in [-1, 1] or None ("no prior"); ``version`` the adapter version that
            answered (-1 = base model).

        Raises:
            PriorServiceError: the frame is not a uint8 (H, W, 3) array.
        """
        self._ensure_loop()
        try:
            frame = check_frame(frame)
        except ValueError as exc:
            raise PriorServiceError(str(exc)) from exc
        instruction = self._instruction(prompt)
        waited = 0.0 if sent_at is None else max(0.0, time.time() - float(sent_at))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(frame, instruction, time.monotonic() - waited, future))
        assert self._wake is not None
        self._wake.set()
        return await future

    async def query_many(self, frames: list[np.ndarray], prompt: Optional[str] = None) -> list[dict[str, Any]]:
        """Several queries at once (frames: list of (H, W, 3) uint8); batched like separate calls."""
        return list(await asyncio.gather(*(self.query(f, prompt) for f in frames)))

    async def _next_batch(self) -> list[_Pending]:
        assert self._wake is not None
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()
        deadline = self._pending[0].enqueued + self.cfg.max_wait_ms / 1000.0
        while len(self._pending) < self.cfg.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                break
        n = min(len(self._pending), self.cfg.max_batch_size)
        return [self._pending.popleft() for _ in range(n)]

    def _reply(self, item: _Pending, result: dict[str, Any]) -> None:
        if not item.future.done():
            item.future.set_result(result)

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            now = time.monotonic()
            live = []
            for item in batch:
                if item.future.done():  # caller gave up (cancelled)
                    continue
                if now - item.enqueued > self.cfg.timeout_s:
                    self.stats.timeout()
                    self._reply(item, self._result("timeout", None, None, item, 0))
                else:
                    live.append(item)
            if not live:
                continue
            adapter = self.registry.current
            version = self.registry.version
            try:
                texts = await loop.run_in_executor(self._engine, self.backend.generate,
                                                   [i.frame for i in live], [i.instruction for i in live], adapter)
            # The batching loop must outlive any engine failure (its requests then get no prior); vLLM
            # and transformers raise many unrelated types from a failed forward pass.
            except Exception as exc:  # noqa: BLE001
                log.error("prior service: engine call for %d requests failed: %s", len(live), exc)
                self.stats.engine_error(len(live))
                for item in live:
                    self._reply(item, self._result("error", None, None, item, len(live), version))
                continue
            self.stats.batch(len(live))
            done = time.monotonic()
            for item, text in zip(live, texts):
                action = self.codec.decode(text)
                self.stats.answer((done - item.enqueued) * 1000.0, parsed=action is not None)
                status = "ok" if action is not None else "unparsed"
                self._reply(item, self._result(status, text, action, item, len(live), version, done))

    @staticmethod
    def _result(status: str, text: Optional[str], action: Optional[np.ndarray], item: _Pending,
                batch_size: int, version: int = -1, done: Optional[float] = None) -> dict[str, Any]:
        done = time.monotonic() if done is None else done
        return {"status": status, "text": text, "action": None if action is None else action.tolist(),
                "version": version, "latency_ms": (done - item.enqueued) * 1000.0, "batch_size": batch_size}

    # -- adapters -------------------------------------------------------------------------------------

    async def load_adapter(self, path: str, version: int) -> dict[str, Any]:
        """Hot-swap: load adapter ``version`` from ``path`` (inside the run's adapter directory) into the
        running engine; queries batched after it returns use it. Older versions beyond ``max_adapters``
        are dropped.

        Returns:
            ``{"version", "load_s", "dropped"}``.

        Raises:
            AdapterError: refused or failed to load; the previous adapter keeps serving.
        """
        self._ensure_loop()
        assert self._swap_lock is not None
        async with self._swap_lock:
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            try:
                adapter = self.registry.check(path, version)
                await loop.run_in_executor(self._engine, self.backend.load_adapter, adapter)
            except AdapterError as exc:
                self.stats.adapter(self.registry.version, failed=True)
                log.error("prior service: adapter v%s refused, v%d keeps serving: %s", version,
                          self.registry.version, exc)
                raise
            load_s = time.perf_counter() - t0
            dropped = self.registry.commit(adapter)
            for old in dropped:
                await loop.run_in_executor(self._engine, self.backend.unload_adapter, old)
            self.stats.adapter(adapter.version, load_s)
            log.info("prior service: adapter v%d serving (loaded in %.3f s)", adapter.version, load_s)
            return {"version": adapter.version, "load_s": load_s, "dropped": [a.version for a in dropped]}

    # -- introspection --------------------------------------------------------------------------------

    async def metrics(self) -> dict[str, Any]:
        """Numeric figures with ``prior/`` keys (queries/s, batch size, p50/p95 latency, parse failures,
        adapter version, ...)."""
        out = self.stats.as_dict()
        out["prior/queue_length"] = len(self._pending)
        out["prior/engine_start_s"] = self.start_s
        return out

    async def info(self) -> dict[str, Any]:
        """What is serving: backend, family, codec, adapter versions, HTTP address (None when unbound)."""
        self._ensure_loop()
        return {"backend": self.backend_name, "family": self.family, "model": self.cfg.model,
                "codec": self.codec.name, "action_dim": self.codec.action_dim, "guided": self.backend.guided,
                "version": self.registry.version, "loaded_versions": [a.version for a in self.registry.loaded],
                "restored_version": self.restored, "replica": self.replica, "max_new_tokens": self.max_new_tokens,
                "ray_metrics": self.stats.exports_ray_metrics,
                "http": self._http.address if self._http is not None else None,
                "http_error": self._http.error if self._http is not None else None}

    async def shutdown(self) -> None:
        """Stop the engine (the actor can then be killed without leaking engine processes)."""
        if self._http is not None:
            await self._http.stop()
        if self._loop_task is not None:
            self._loop_task.cancel()
        await asyncio.get_running_loop().run_in_executor(self._engine, self.backend.close)
        self._engine.shutdown(wait=False)


def start_prior_service(cfg: CovrConfig, *, run_id: str, adapter_dir: str | Path, codec: str, action_dim: int,
                        task_prompt: str, action_description: str, replica: int = 0,
                        namespace: Optional[str] = None) -> Any:
    """Create replica ``replica`` of the service as a named Ray actor (``prior_actor_name``); returns its
    handle immediately (the engine starts in the actor; call ``info`` with a timeout to wait for it).

    Restarts: ``ray.max_actor_restarts``; in-flight calls are not retried (they come back as errors, i.e.
    "no prior", on the env side). Resources: ``ray.num_cpus_prior`` and ``ray.num_gpus_prior`` per replica.
    """
    import ray

    gpus = ray.cluster_resources().get("GPU", 0.0)
    if cfg.ray.address is None and cfg.ray.num_gpus_prior > gpus:  # a local Ray never grows: fail now
        raise ConfigError("ray.num_gpus_prior", cfg.ray.num_gpus_prior, f"<= the {gpus:g} GPUs of this local Ray",
                          hint="set ray.num_gpus_prior=0 to serve the prior on CPU")
    actor_cls = ray.remote(PriorService)
    options: dict[str, Any] = dict(
        name=prior_actor_name(run_id, replica), max_restarts=cfg.ray.max_actor_restarts, max_task_retries=0,
        num_cpus=cfg.ray.num_cpus_prior, num_gpus=cfg.ray.num_gpus_prior,
        max_concurrency=max(1000, 4 * cfg.prior.max_batch_size),
    )
    if namespace is not None:
        options["namespace"] = namespace
    return actor_cls.options(**options).remote(
        cfg.prior, codec=codec, action_dim=action_dim, task_prompt=task_prompt,
        action_description=action_description, adapter_dir=str(adapter_dir), max_lora_rank=cfg.lora.rank,
        seed=cfg.seed, replica=replica, run_id=run_id)


def start_prior_replicas(cfg: CovrConfig, *, run_id: str, adapter_dir: str | Path, codec: str, action_dim: int,
                         task_prompt: str, action_description: str, namespace: Optional[str] = None,
                         ) -> list[Any]:
    """``ray.prior_replicas`` replicas of the service (env runner i uses replica ``i % prior_replicas``)."""
    return [start_prior_service(cfg, run_id=run_id, adapter_dir=adapter_dir, codec=codec, action_dim=action_dim,
                                task_prompt=task_prompt, action_description=action_description, replica=r,
                                namespace=namespace)
            for r in range(cfg.ray.prior_replicas)]


def load_adapter_everywhere(handles: list[Any], path: str | Path, version: int, timeout_s: float) -> list[Any]:
    """Hot-swap ``version`` into every replica; returns per replica its result dict or the error raised
    (a replica that refuses keeps serving its previous adapter)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    refs = [h.load_adapter.remote(str(path), version) for h in handles]
    out: list[Any] = []
    for ref in refs:
        try:
            out.append(ray.get(ref, timeout=timeout_s))
        except (AdapterError, RayTaskError, RayActorError, GetTimeoutError) as exc:
            out.append(exc)
    return out
