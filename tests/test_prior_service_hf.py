"""The prior service on its transformers backend (no vLLM needed): batching, parse failures counted,
PEFT hot swap and refusal, and the optional loopback HTTP endpoint. Runs the service object on an
asyncio loop in the test process (the same object Ray hosts as an actor)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from covr_ray.config import PriorSection
from covr_ray.errors import AdapterError
from covr_ray.lora.random_adapter import build_random_adapter
from covr_ray.lora.versions import adapter_path
from covr_ray.prior.codecs import get_codec
from covr_ray.prior.service import PriorService
from support.ray_head import free_port


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (84, 84, 3), dtype=np.uint8) for _ in range(n)]


def _service(model: Path, adapter_dir: Path, **over: Any) -> PriorService:
    cfg = PriorSection(model=str(model), backend="transformers", max_new_tokens=8, max_batch_size=8,
                      max_wait_ms=30, max_adapters=2, **over)
    return PriorService(cfg, codec="driving", action_dim=2, task_prompt="Drive forward fast.",
                        action_description="Action: [steer, throttle_brake].", adapter_dir=str(adapter_dir),
                        max_lora_rank=8)


def test_batches_counts_parse_failures_and_hot_swaps(tiny_vlm_dir: Path, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    build_random_adapter(str(tiny_vlm_dir), adapter_path(adapters, 1), rank=8, seed=1)
    codec = get_codec("driving", 2)

    async def scenario() -> None:
        svc = _service(tiny_vlm_dir, adapters)
        assert svc.restored == 1 and svc.registry.version == 1  # the newest published adapter on start
        frames = _frames(6)
        before = await svc.query_many(frames)
        assert {a["version"] for a in before} == {1} and max(a["batch_size"] for a in before) > 1
        for a in before:  # free text: the status says exactly whether the codec found an action
            assert a["status"] == ("ok" if codec.decode(a["text"]) is not None else "unparsed")
        metrics = await svc.metrics()
        assert metrics["prior/parse_failures_total"] == sum(a["status"] == "unparsed" for a in before)
        assert metrics["prior/batch_size_max"] > 1

        build_random_adapter(str(tiny_vlm_dir), adapter_path(adapters, 2), rank=8, seed=2)
        swap = await svc.load_adapter(str(adapter_path(adapters, 2)), 2)
        assert swap["version"] == 2
        after = await svc.query_many(frames)
        assert {a["version"] for a in after} == {2}
        assert [a["text"] for a in after] != [a["text"] for a in before]

        broken = adapter_path(adapters, 3)
        shutil.copytree(adapter_path(adapters, 2), broken)
        (broken / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + bytes(100))
        with pytest.raises(AdapterError):
            await svc.load_adapter(str(broken), 3)
        again = await svc.query_many(frames)
        assert [a["text"] for a in again] == [a["text"] for a in after]  # v2 still serving, same answers
        assert (await svc.info())["version"] == 2 and (await svc.info())["http"] is None
        await svc.shutdown()

    asyncio.run(scenario())


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_endpoint_listens_on_loopback_only_when_asked(tiny_vlm_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    port = free_port()

    async def scenario() -> None:
        svc = _service(tiny_vlm_dir, tmp_path, http_port=port)
        for _ in range(100):
            info = await svc.info()
            if info["http"] or info["http_error"]:
                break
            await asyncio.sleep(0.05)
        assert info["http"] == f"http://127.0.0.1:{port}", info
        buf = io.BytesIO()
        Image.fromarray(_frames(1)[0]).save(buf, format="PNG")
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, _post, f"{info['http']}/v1/prior",
                                        {"image_png_base64": base64.b64encode(buf.getvalue()).decode()})
        bad = await loop.run_in_executor(None, _post, f"{info['http']}/v1/prior", {"image_png_base64": "!!"})
        assert ok[0] == 200 and ok[1]["status"] in ("ok", "unparsed") and ok[1]["version"] == -1
        assert bad[0] == 400 and "base64" in bad[1]["error"]
        await svc.shutdown()

    asyncio.run(scenario())
