"""Connection to a CARLA server, with the watchdog that brings it back.

:class:`CarlaConnection` owns the ``carla.Client``, the world and the traffic manager. Every RPC that the
env makes goes through :meth:`CarlaConnection.call`, which turns the client's failures (``RuntimeError``:
"time-out of N ms while waiting for the simulator") into :class:`ConnectionLost`. The env then calls
:meth:`CarlaConnection.recover`: it reconnects up to ``reconnect_attempts`` times with a growing pause, and,
when ``server_command`` is configured, starts the server with that command when no server it started is
running (or when the one it started has been unreachable for over a minute) before trying again. If all attempts fail it raises
:class:`~covr_ray.errors.SimulatorConnectionError`, which Ray's fault tolerance turns into a restarted env.

The ``carla`` package is imported lazily (:func:`import_carla`); without it the CARLA envs raise
:class:`~covr_ray.errors.DependencyMissingError` and everything else keeps working.
"""

from __future__ import annotations

import importlib
import os
import shlex
import signal
import subprocess
import time
from typing import Any, Callable, Optional

from covr_ray.errors import DependencyMissingError, SimulatorConnectionError
from covr_ray.log import get_logger

log = get_logger(__name__)


class ConnectionLost(Exception):
    """A CARLA RPC failed or timed out; the caller should end its episode and :meth:`recover`."""


def import_carla(feature: str = "the carla-hw / carla-gp envs") -> Any:
    """The ``carla`` client module, or DependencyMissingError naming the extra to install."""
    try:
        return importlib.import_module("carla")
    except ImportError as exc:
        raise DependencyMissingError(package="carla", feature=feature, extra="carla") from exc


class CarlaConnection:
    """Client, world and traffic manager of one CARLA server, reconnecting when it drops.

    Args:
        carla: the ``carla`` module (or an object with the same API).
        host, port, tm_port: where the server and its traffic manager listen.
        timeout_s: client timeout of every RPC.
        town: map to load when the server has another one loaded.
        reconnect_attempts: tries in :meth:`recover` before giving up.
        backoff_s: pause before the first retry; doubles each retry, capped at 30 s.
        server_command: shell command that starts the server (None: never start one).
        server_start_wait_s: pause after starting the server before connecting.
        sleep: ``time.sleep`` (injected by tests).
    """

    def __init__(self, carla: Any, host: str, port: int, tm_port: int, timeout_s: float, town: str,
                 reconnect_attempts: int = 5, backoff_s: float = 2.0, server_command: Optional[str] = None,
                 server_start_wait_s: float = 20.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.carla = carla
        self.host, self.port, self.tm_port = host, int(port), int(tm_port)
        self.timeout_s = float(timeout_s)
        self.town = town
        self.reconnect_attempts = int(reconnect_attempts)
        self.backoff_s = float(backoff_s)
        self.server_command = server_command
        self.server_start_wait_s = float(server_start_wait_s)
        self._sleep = sleep
        self.client: Any = None
        self.world: Any = None
        self.map: Any = None
        self.tm: Any = None
        self.reconnects = 0
        self.server_restarts = 0
        self._server: Optional[subprocess.Popen] = None
        self._started_at = 0.0

    @property
    def connected(self) -> bool:
        return self.world is not None

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one RPC; a client failure becomes :class:`ConnectionLost` and marks the connection down."""
        if not self.connected:
            raise ConnectionLost(f"not connected to CARLA at {self.host}:{self.port}")
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:  # the carla client raises RuntimeError for timeouts and lost sockets
            self.mark_lost()
            raise ConnectionLost(str(exc)) from exc

    def mark_lost(self) -> None:
        self.client = self.world = self.map = self.tm = None

    def connect(self) -> None:
        """One connection attempt: client, world (loading ``town`` if needed), traffic manager."""
        client = self.carla.Client(self.host, self.port)
        client.set_timeout(self.timeout_s)
        try:
            world = client.get_world()
            current = world.get_map().name.rsplit("/", 1)[-1]
            if self.town and current != self.town:
                log.info("CARLA: loading %s (server had %s)", self.town, current)
                world = client.load_world(self.town)
            self.tm = client.get_trafficmanager(self.tm_port)
            self.map = world.get_map()
        except RuntimeError as exc:
            self.mark_lost()
            raise ConnectionLost(str(exc)) from exc
        self.client, self.world = client, world

    def recover(self) -> None:
        """Reconnect, restarting the server if a start command is configured; raise when all tries fail.

        Raises:
            SimulatorConnectionError: the server stayed unreachable for ``reconnect_attempts`` tries.
        """
        self.mark_lost()
        last = ""
        for attempt in range(max(self.reconnect_attempts, 1)):
            if self.server_command and attempt > 0 and (not self._server_running() or self._server_hung()):
                self.start_server()
            try:
                self.connect()
                self.reconnects += 1
                log.warning("CARLA: reconnected to %s:%d (try %d)", self.host, self.port, attempt + 1)
                return
            except ConnectionLost as exc:
                last = str(exc)
                log.warning("CARLA: %s:%d unreachable (try %d/%d): %s", self.host, self.port, attempt + 1,
                            self.reconnect_attempts, last)
            self._sleep(min(self.backoff_s * 2 ** attempt, 30.0))
        raise SimulatorConnectionError(
            f"CARLA server {self.host}:{self.port} unreachable after {self.reconnect_attempts} tries ({last}); "
            "start the server, check env.carla.host/port, or set env.carla.server_command to let the env "
            "restart it")

    def ensure(self) -> None:
        """Connected on return: connect now, or :meth:`recover` when that fails."""
        if self.connected:
            return
        try:
            self.connect()
        except ConnectionLost:
            self.recover()

    # --- the server process ----------------------------------------------------------------------------
    def _server_running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def _server_hung(self) -> bool:
        """A server we started long ago that is still unreachable (booting takes ``server_start_wait_s``)."""
        return self._server_running() and time.monotonic() - self._started_at > max(3 * self.server_start_wait_s, 60.0)

    def start_server(self) -> None:
        """Start the server with ``server_command`` (its own process group), then wait for it to come up."""
        if not self.server_command:
            return
        self.stop_server()
        log.warning("CARLA: starting the server: %s", self.server_command)
        self._server = subprocess.Popen(shlex.split(self.server_command), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        self._started_at = time.monotonic()
        self.server_restarts += 1
        self._sleep(self.server_start_wait_s)

    def stop_server(self) -> None:
        """Stop a server this connection started (never one it did not start)."""
        proc, self._server = self._server, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
