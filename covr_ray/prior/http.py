"""Optional HTTP endpoint of the prior service (only when ``prior.http_port`` is set; loopback by default).

Routes (JSON):

- ``POST /v1/prior`` with ``{"image_png_base64": "...", "prompt": "..." (optional)}`` -> the answer dict
  of :meth:`PriorService.query`.
- ``GET /v1/metrics`` -> :meth:`PriorService.metrics`; ``GET /v1/info`` -> :meth:`PriorService.info`.

Needs ``aiohttp`` (installed with ``ray[default]``, extra ``covr-ray[dashboard]``).
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any, Optional

import numpy as np

from covr_ray.errors import DependencyMissingError, PriorServiceError, ShardError
from covr_ray.frames import decode_frame
from covr_ray.log import get_logger

log = get_logger(__name__)
#: Largest request body accepted, bytes.
MAX_BODY = 8 * 1024 * 1024


def decode_png(data: str) -> np.ndarray:
    """Base64 PNG/JPEG text -> (H, W, 3) uint8; PriorServiceError naming the problem otherwise."""
    try:
        return decode_frame(base64.b64decode(data, validate=True))
    except (binascii.Error, ShardError) as exc:
        raise PriorServiceError(f"image_png_base64 is not a base64 image ({exc}); allowed: base64 of a PNG "
                                "or JPEG file") from exc


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


class PriorHTTPServer:
    """aiohttp server running on the service actor's event loop."""

    def __init__(self, service: Any, host: str, port: int) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.address: Optional[str] = None
        self.error: Optional[str] = None
        self._runner: Any = None

    async def start(self) -> None:
        try:
            from aiohttp import web
        except ImportError:
            self.error = str(DependencyMissingError("aiohttp", "prior.http_port", extra="dashboard"))
            log.error("prior HTTP endpoint not started: %s", self.error)
            return

        async def prior(request: "web.Request") -> "web.Response":
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": "body is not JSON"}, status=400)
            if not isinstance(body, dict) or not isinstance(body.get("image_png_base64"), str):
                return web.json_response({"error": "expected {'image_png_base64': str, 'prompt': str?}"},
                                         status=400)
            prompt = body.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                return web.json_response({"error": f"prompt must be a string, got {type(prompt).__name__}"},
                                         status=400)
            try:
                frame = decode_png(body["image_png_base64"])
                answer = await self.service.query(frame, prompt)
            except PriorServiceError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response(answer)

        async def metrics(_request: "web.Request") -> "web.Response":
            return web.json_response(_json_safe(await self.service.metrics()))

        async def info(_request: "web.Request") -> "web.Response":
            return web.json_response(await self.service.info())

        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/prior", prior)
        app.router.add_get("/v1/metrics", metrics)
        app.router.add_get("/v1/info", info)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
        except OSError as exc:
            self.error = f"cannot bind {self.host}:{self.port}: {exc}"
            log.error("prior HTTP endpoint not started: %s", self.error)
            await self._runner.cleanup()
            self._runner = None
            return
        self.address = f"http://{self.host}:{self.port}"
        log.info("prior HTTP endpoint at %s", self.address)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self.address = None
