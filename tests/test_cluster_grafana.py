"""cluster/grafana/covr_dashboard.json: a Grafana dashboard of the covr_* metrics, importable beside Ray's own.

Every PromQL selector must name a metric the code really exports, with the labels it really carries:

* the names are derived from the metric keys the code hands :class:`~covr_ray.metrics.MetricsSink` (string
  keys of dict literals / subscript stores / ``log_value`` calls in ``covr_ray``, plus the keys produced by
  running the functions that build keys at run time: ``learner_metrics``, ``eval_metrics``, the prior
  service's ``PriorStats`` and the env runners' ``PriorClientStatsCallback``), through the sink's own
  :func:`~covr_ray.metrics.ray_metric_name` and Ray's ``ray_`` prefix, and from the prior service's own Ray
  metrics (``covr_ray.prior.metrics._RayMetrics``, constructed against recording stand-ins);
* :func:`test_every_selector_selects_series_ray_really_exports` starts Ray, logs the dashboard's keys
  through a real ``MetricsSink``, runs a real ``PriorStats`` in an actor, scrapes Ray's Prometheus
  endpoint and evaluates every selector of the dashboard against what Ray exported.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from covr_ray.metrics import KEY_PATTERN, RUN_TAG, ray_metric_name
from support.ray_head import free_port

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "cluster" / "grafana" / "covr_dashboard.json"

#: Ray puts this in front of every application metric it exports to Prometheus.
RAY_PREFIX = "ray_"

SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
RATE_FUNCTIONS = {"rate", "irate", "increase"}
GAUGE_FUNCTIONS = {"deriv", "delta", "idelta"}


# --- what the code exports --------------------------------------------------------------------------------


def _literal_keys() -> tuple[set[str], set[str]]:
    """Namespaced string keys written by the code: (dict-literal keys and ``x["k"] = ...`` stores,
    keys passed to ``metrics_logger.log_value`` in env runners)."""
    keys: set[str] = set()
    logged: set[str] = set()
    for path in sorted((REPO / "covr_ray").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            found: list[Any] = []
            if isinstance(node, ast.Dict):
                found = [k for k in node.keys if k is not None]
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found = [t.slice for t in targets if isinstance(t, ast.Subscript)]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "log_value" and node.args):
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    logged.add(first.value)
            keys |= {k.value for k in found if isinstance(k, ast.Constant) and isinstance(k.value, str)
                     and KEY_PATTERN.match(k.value)}
    return keys, logged


class _RecordingLogger:
    """Stands in for an env runner's MetricsLogger."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def log_value(self, key: str, value: float, reduce: str = "mean", **_: Any) -> None:
        self.values[key] = float(value)


def _env_runner_keys() -> dict[str, float]:
    """What PriorClientStatsCallback logs for a real PriorWrapper (with a client) in one env runner."""
    import gymnasium as gym
    import numpy as np

    from covr_ray.prior.client import PriorClient, PriorWrapper
    from covr_ray.prior.client_stats import PriorClientStatsCallback

    class _Env(gym.Env):
        observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    wrapper = PriorWrapper(_Env(), action_dim=1, client=PriorClient(service_name="covr-test-no-such-service"))
    logger = _RecordingLogger()
    PriorClientStatsCallback().on_sample_end(env_runner=SimpleNamespace(env=wrapper), metrics_logger=logger)
    return logger.values


class _Everything(dict):
    """A result that has every key asked for (so a function shows every key it can produce)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: Any) -> float:
        return 1.0

    def get(self, key: Any, default: Any = None) -> float:
        return 1.0


def _nested(paths: dict[tuple[str, ...], str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in paths:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = 1.0
    return out


def _runtime_keys(logged: set[str]) -> set[str]:
    """Keys built at run time, from running the functions that build them."""
    from covr_ray.evaluate import eval_metrics
    from covr_ray.prior.metrics import PriorStats, aggregate_replicas
    from covr_ray.rl.algo import METRIC_PATHS, learner_metrics

    result = _nested(METRIC_PATHS)
    result.setdefault("env_runners", {}).update({k: 1.0 for k in logged})
    result["env_runners"].update(_env_runner_keys())
    keys = set(learner_metrics(result))
    keys |= set(eval_metrics(_Everything()))
    stats = PriorStats(replica="0", ray_metrics=False)
    stats.batch(2)
    stats.answer(10.0, parsed=True)
    stats.timeout()
    stats.adapter(1, load_s=0.5)
    keys |= set(stats.as_dict()) | set(aggregate_replicas([stats.as_dict(), stats.as_dict()]))
    return keys


def sink_keys() -> set[str]:
    """Every metric key the code hands the MetricsSink."""
    keys, logged = _literal_keys()
    return {k for k in keys | _runtime_keys(logged) if KEY_PATTERN.match(k)}


class _Recorder:
    made: ClassVar[list[tuple[str, str, tuple[str, ...]]]] = []

    def __init__(self, name: str, description: str = "", *args: Any, tag_keys: tuple[str, ...] = (), **kw: Any):
        self.made.append((type(self).__name__, name, tuple(tag_keys or ())))

    def set_default_tags(self, tags: dict[str, str]) -> None:
        pass


class Counter(_Recorder):
    pass


class Gauge(_Recorder):
    pass


class Histogram(_Recorder):
    pass


def service_metrics(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Prometheus name -> (kind, tag keys) of the prior service's own Ray metrics (``_RayMetrics``)."""
    from ray.util import metrics

    from covr_ray.prior.metrics import _RayMetrics

    _Recorder.made = []
    for cls in (Counter, Gauge, Histogram):
        monkeypatch.setattr(metrics, cls.__name__, cls)
    _RayMetrics("0", "r0")
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for kind, name, tags in _Recorder.made:
        if kind == "Counter":
            out[RAY_PREFIX + name + "_total"] = ("counter", tags)
        elif kind == "Histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[RAY_PREFIX + name + suffix] = ("histogram" if suffix == "_bucket" else "counter", tags)
        else:
            out[RAY_PREFIX + name] = ("gauge", tags)
    return out


def prometheus_name(key: str) -> str:
    """The name Prometheus shows for a MetricsSink key (the sink's Gauge name, with Ray's prefix)."""
    return RAY_PREFIX + ray_metric_name(key)


# --- the dashboard ----------------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def targets(dash: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    for panel in panels(dash):
        for target in panel.get("targets", []):
            yield panel, target["expr"]


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]], str | None]]:
    """``[(metric name, {label: (op, value)}, enclosing function or None)]`` of a PromQL expression."""
    out = []
    for m in SELECTOR.finditer(expr):
        body = m.group(2).strip()
        matchers: dict[str, tuple[str, str]] = {}
        pos = 0
        while pos < len(body):
            mm = MATCHER.match(body, pos)
            assert mm, f"cannot parse label matchers {body!r} in {expr!r}"
            matchers[mm.group(1)] = (mm.group(2), mm.group(3))
            pos = mm.end()
        fn = re.search(r"([A-Za-z_]+)\s*\(\s*$", expr[:m.start()])
        out.append((m.group(1), matchers, fn.group(1) if fn else None))
    return out


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def keys() -> set[str]:
    return sink_keys()


# --- tests ------------------------------------------------------------------------------------------------


def test_key_sources_find_the_keys_the_loop_logs(keys):
    # the sources above are not vacuous: they see the orchestrator's, the round's and the runtime-built keys
    for key in ("loop/env_steps", "loop/lambda", "lora/adapter_version", "lora/round_s", "eddf/keep_frac",
                "round/kept_rows", "learner/prior_coverage", "rollout/episode_return_mean", "eval/return_mean",
                "prior/latency_p95_ms", "prior/answered_total", "prior_client/sent", "prior_client/with_prior_frac"):
        assert key in keys, key
    assert "loop/env_steps_per_s" not in keys  # no such metric: env steps/s is deriv() of loop/env_steps


def test_dashboard_sits_beside_rays_own(dash):
    from ray.dashboard.modules.metrics import dashboards
    from ray.dashboard.modules.metrics.dashboards.common import DashboardConfig

    ray_uids = set()
    for info in pkgutil.iter_modules(dashboards.__path__):
        module = importlib.import_module(f"{dashboards.__name__}.{info.name}")
        ray_uids |= {v.default_uid for v in vars(module).values() if isinstance(v, DashboardConfig)}
    assert "rayDefaultDashboard" in ray_uids
    assert isinstance(dash["uid"], str) and 0 < len(dash["uid"]) <= 40 and dash["uid"] not in ray_uids
    ray_base = json.loads((Path(dashboards.__file__).parent / "default_grafana_dashboard_base.json").read_text())
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= ray_base["schemaVersion"]
    assert dash["title"] and "id" not in dash  # no instance id: Grafana assigns one on import

    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    session = variables["SessionName"]
    assert session["type"] == "query" and session["datasource"] == "${datasource}"
    assert session["includeAll"] and re.fullmatch(session["allValue"], "session_2026-01-01_00-00-00_000000_1")
    assert session["query"]["query"] == session["definition"]
    assert re.fullmatch(r"label_values\((ray_\w+), SessionName\)", session["definition"])
    run = variables["run"]  # the runs of the picked session, several at once
    assert run["type"] == "query" and run["includeAll"] and run["multi"] and run["allValue"] == ".*"
    assert run["query"]["query"] == run["definition"]
    assert re.fullmatch(r'label_values\((ray_\w+)\{SessionName=~"\$SessionName"\}, run\)', run["definition"])

    for panel in panels(dash):
        if panel["type"] != "row":
            assert panel["datasource"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    used = {name for _panel, expr in targets(dash) for name in VARIABLE.findall(expr)}
    assert used <= set(variables), f"undefined variables {used - set(variables)}"


def test_panel_ids_are_unique_and_panels_do_not_overlap(dash):
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), ids
    boxes = []
    for p in panels(dash):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for other, (x, y, w, h) in boxes:
            assert (g["x"] + g["w"] <= x or x + w <= g["x"] or g["y"] + g["h"] <= y or y + h <= g["y"]), \
                f"{p['title']!r} overlaps {other!r}"
        boxes.append((p["title"], (g["x"], g["y"], g["w"], g["h"])))
    refs = [[t["refId"] for t in p.get("targets", [])] for p in panels(dash)]
    assert all(len(r) == len(set(r)) for r in refs)


def test_every_selector_names_a_metric_the_code_exports(dash, keys, monkeypatch):
    sink = {prometheus_name(k): k for k in keys}
    service = service_metrics(monkeypatch)
    assert "ray_covr_prior_replica_latency_ms_bucket" in service and "ray_covr_prior_replica_queries_total" in service
    collide = set(sink) & set(service)  # one name declared twice on a Prometheus page breaks OpenMetrics parsers
    assert not collide, f"the sink's gauges and the prior service's metrics share names: {sorted(collide)}"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    session_metric = re.search(r"label_values\((\w+)", variables["SessionName"]["definition"]).group(1)
    assert session_metric in sink

    for panel, expr in targets(dash):
        found = selectors(expr)
        assert found, f"{panel['title']}: no metric selector in {expr!r}"
        assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), expr
        # every metric name is written as a selector (so it carries the session filter)
        assert sorted(re.findall(r"\bray_\w+", expr)) == sorted(n for n, _, _ in found), expr
        for name, matchers, fn in found:
            where = f"{panel['title']}: {name} in {expr!r}"
            assert name in sink or name in service, f"{where}: no code exports this metric"
            assert matchers.get("SessionName") == ("=~", "$SessionName"), f"{where}: no SessionName filter"
            assert matchers.get(RUN_TAG) == ("=~", "$run"), f"{where}: no run filter"
            assert set(matchers) <= {"SessionName", "replica", RUN_TAG}, f"{where}: a label no covr metric carries"
            replica = matchers.get("replica")
            if name in sink:
                assert replica in (None, ("=", "")), f"{where}: the sink's gauges carry no replica label"
                kind = "gauge"
            else:
                assert replica is None or "replica" in service[name][1], where
                assert RUN_TAG in service[name][1], f"{where}: the prior service's metric carries no run label"
                kind = service[name][0]
            if fn in RATE_FUNCTIONS:
                assert kind in ("counter", "histogram"), f"{where}: {fn}() of a {kind}"
                assert re.search(re.escape(name) + r"\{[^}]*\}\[\$window\]", expr), f"{where}: no [$window]"
            if fn in GAUGE_FUNCTIONS:
                assert kind == "gauge", f"{where}: {fn}() of a {kind}; use rate()"
                assert re.search(re.escape(name) + r"\{[^}]*\}\[\$window\]", expr), f"{where}: no [$window]"
            if kind == "histogram":
                assert fn in RATE_FUNCTIONS and "histogram_quantile(" in expr and re.search(r"by \(le\b", expr), where
            if fn is None:
                assert kind == "gauge", f"{where}: a raw {kind}"


def _queried_keys(dash: dict[str, Any], keys: set[str]) -> dict[str, set[str]]:
    """panel title -> sink keys its queries read."""
    sink = {prometheus_name(k): k for k in keys}
    out: dict[str, set[str]] = {}
    for panel, expr in targets(dash):
        out.setdefault(panel["title"], set()).update(sink[n] for n, _, _ in selectors(expr) if n in sink)
    return out


def test_the_panels_the_issue_asks_for(dash, keys):
    queried = _queried_keys(dash, keys)
    wanted = {
        "Env steps/s": {"loop/env_steps"},
        "Episode return": {"rollout/episode_return_mean", "eval/return_mean"},
        "Prior coverage": {"learner/prior_coverage", "replay/prior_coverage", "prior_client/with_prior_frac"},
        "Prior latency": {"prior/latency_p50_ms", "prior/latency_p95_ms"},
        "Prior service: answered and failed": {"prior/answered_total", "prior/parse_failures_total",
                                               "prior/timeouts_total", "prior/engine_errors_total"},
        "Adapter version": {"lora/adapter_version"},
        "Round timings": {"lora/round_s"},
        "Round rows": {"round/kept_rows"},
        "EDDF keep share": {"eddf/keep_frac"},
        "Lambda (prior weight)": {"loop/lambda"},
    }
    for title, need in wanted.items():
        assert title in queried, f"no panel {title!r}"
        assert need <= queried[title], f"{title}: missing {need - queried[title]}"
    steps = [e for p, e in targets(dash) if p["title"] == "Env steps/s"]
    assert any(e.startswith("deriv(ray_covr_loop_env_steps{") for e in steps)
    latency = " ".join(e for p, e in targets(dash) if p["title"] == "Prior latency")
    assert "histogram_quantile(0.95" in latency and "ray_covr_prior_replica_latency_ms_bucket" in latency


# --- against Ray itself -----------------------------------------------------------------------------------

_LIVE = textwrap.dedent("""
    import dataclasses, json, sys, tempfile, time, urllib.request
    import ray
    port, keys, wanted = int(sys.argv[1]), json.loads(sys.argv[2]), set(json.loads(sys.argv[3]))
    RUN = sys.argv[4]
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", _metrics_export_port=port,
             _system_config={"metrics_report_interval_ms": 200})
    try:
        from covr_ray.config import CovrConfig
        from covr_ray.metrics import MetricsSink

        @ray.remote(num_cpus=0)
        class Replica:  # a prior replica's PriorStats, as the service actor holds it
            def serve(self):
                from covr_ray.prior.metrics import PriorStats
                self.stats = PriorStats(replica="0", run=RUN)
                self.stats.batch(2)
                self.stats.answer(12.0, parsed=True)
                self.stats.answer(40.0, parsed=False)
                self.stats.timeout()
                self.stats.adapter(1, load_s=0.5)
                return self.stats.exports_ray_metrics

        replica = Replica.remote()
        assert ray.get(replica.serve.remote(), timeout=60)
        quiet = dataclasses.replace(CovrConfig().logging, wandb=False, tensorboard=False, csv=False)
        run_dir = tempfile.mkdtemp()
        with open(run_dir + "/run_id", "w") as f:  # the sink labels its gauges with the run's id
            f.write(RUN)
        with MetricsSink(run_dir, quiet) as sink:
            assert sink._ray and sink.run_label == RUN
            sink.log({k: 1.0 for k in keys}, step=1)
            deadline, text = time.monotonic() + 60, ""
            while time.monotonic() < deadline:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
                names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
                if wanted <= names:
                    break
                time.sleep(0.25)
        print("SESSION=" + ray.get_runtime_context().get_session_name())
        print("EXPOSITION=" + json.dumps(text))
    finally:
        ray.shutdown()
""")

SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+\S+")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _matches(labels: dict[str, str], matchers: dict[str, tuple[str, str]], variables: dict[str, str]) -> bool:
    for label, (op, value) in matchers.items():
        value = VARIABLE.sub(lambda m: variables[m.group(1)], value)
        have = labels.get(label, "")
        ok = {"=": have == value, "!=": have != value, "=~": re.fullmatch(value, have) is not None,
              "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


def test_every_selector_selects_series_ray_really_exports(dash, keys):
    sink = {prometheus_name(k): k for k in keys}
    found = [(panel["title"], s) for panel, expr in targets(dash) for s in selectors(expr)]
    logged = sorted({sink[name] for _, (name, _, _) in found if name in sink})
    wanted = sorted({name for _, (name, _, _) in found})
    run_id = "grafana-test-run"
    proc = subprocess.run([sys.executable, "-c", _LIVE, str(free_port()), json.dumps(logged), json.dumps(wanted),
                           run_id],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if line.startswith(("SESSION=", "EXPOSITION=")))
    session, text = out["SESSION"], json.loads(out["EXPOSITION"])
    series: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            series.setdefault(m.group(1), []).append(dict(LABEL.findall(m.group(2) or "")))
    missing = [name for name in wanted if name not in series]
    assert not missing, f"Ray did not export {missing}"
    assert all(labels.get("SessionName") == session for name in wanted for labels in series[name]), \
        "a covr series without this session's SessionName label"
    assert all(labels.get(RUN_TAG) == run_id for name in wanted for labels in series[name]), \
        "a covr series without its run's label"
    # The dashboard's SessionName variable offers this session.
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    source = re.search(r"label_values\((\w+)", variables["SessionName"]["definition"]).group(1)
    assert any(labels.get("SessionName") == session for labels in series.get(source, []))
    values = {"SessionName": variables["SessionName"]["allValue"], "run": variables["run"]["allValue"], "window": "5m"}
    pins = (values, {**values, "SessionName": re.escape(session)}, {**values, "run": re.escape(run_id)})
    for pinned in pins:  # "All", this session, this run
        for title, (name, matchers, _fn) in found:
            assert any(_matches(labels, matchers, pinned) for labels in series.get(name, [])), \
                f"{title}: {name}{{{matchers}}} selects nothing Ray exported ({len(series.get(name, []))} series)"
