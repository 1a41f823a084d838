"""Prometheus metrics without a client library: plain counters and fixed-bucket histograms.

The hot path only increments counters and list slots (no locks: everything that records
runs on the event loop thread), which costs well under a microsecond; the exposition text is
built when ``/metrics`` is scraped. Metric names and labels are a contract with the rendered
PrometheusRules and canary analysis (docs/runtime-api.md) — do not rename them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in pairs) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Histogram:
    """Cumulative-on-render histogram: observe() touches one bucket slot."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value

    def render(self, name: str, labels: Sequence[tuple[str, str]]) -> list[str]:
        lines, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else _number(bound)
            lines.append(f"{name}_bucket{_labels([*labels, ('le', le)])} {running}")
        lines.append(f"{name}_sum{_labels(labels)} {self.total!r}")
        lines.append(f"{name}_count{_labels(labels)} {running}")
        return lines


class Endpoint:
    """One endpoint's series: a request count per status code and the latency histogram. The
    app keeps it with the route, so recording a request is attribute work, no dict lookup for a
    200."""

    __slots__ = ("codes", "latency", "ok")

    def __init__(self) -> None:
        self.ok = 0  # answered 200
        self.codes: dict[int, int] = {}  # every other status
        self.latency = Histogram(LATENCY_BUCKETS)

    def record(self, code: int, seconds: float) -> None:
        if code == 200:
            self.ok += 1
        else:
            self.codes[code] = self.codes.get(code, 0) + 1
        self.latency.observe(seconds)

    def counts(self) -> list[tuple[int, int]]:
        found = dict(self.codes)
        if self.ok:
            found[200] = self.ok
        return sorted(found.items())


class Metrics:
    """All series for the one model this process serves."""

    def __init__(self, model: str, *, track: str = "", revision: str = "",
                 worker: str = "") -> None:
        self.model = model
        # Constant labels a canary sets (mlship rollout) so analysis can tell its series from
        # the stable ones without relying on relabeling; absent when empty.
        # With workers > 1 each worker's series also carry worker=N (mlship_runtime.workers).
        self.constant = [(key, value) for key, value in (("track", track),
                                                         ("revision", revision),
                                                         ("worker", worker)) if value]
        self.version = ""
        self.provider = ""
        self.endpoints: dict[str, Endpoint] = {}
        self.inference = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.queue_depth = 0
        self.in_flight = 0
        self.load_seconds: float | None = None
        # (provider asked for, provider onnxruntime uses), ORT names; asked is "auto" for auto.
        self.execution_provider: tuple[str, str] | None = None
        self.ready = False
        self.rejected = 0
        # More families rendered after these ones (drift statistics): each returns its lines.
        self.collectors: list[Callable[[], list[str]]] = []

    def endpoint(self, name: str) -> Endpoint:
        found = self.endpoints.get(name)
        if found is None:
            found = self.endpoints[name] = Endpoint()
        return found

    def request(self, endpoint: str, code: int, seconds: float) -> None:
        self.endpoint(endpoint).record(code, seconds)

    def render(self) -> bytes:
        model = [("model", self.model), *self.constant]
        out: list[str] = [
            "# HELP mlship_requests_total HTTP requests by endpoint and status code.",
            "# TYPE mlship_requests_total counter"]
        endpoints = sorted(self.endpoints.items())
        for endpoint, series in endpoints:
            for code, count in series.counts():
                out.append("mlship_requests_total"
                           f"{_labels([*model, ('endpoint', endpoint), ('code', str(code))])} "
                           f"{count}")
        out += ["# HELP mlship_request_duration_seconds Time from request to response.",
                "# TYPE mlship_request_duration_seconds histogram"]
        for endpoint, series in endpoints:
            out += series.latency.render("mlship_request_duration_seconds",
                                         [*model, ("endpoint", endpoint)])
        out += ["# HELP mlship_inference_duration_seconds onnxruntime run time per batch.",
                "# TYPE mlship_inference_duration_seconds histogram",
                *self.inference.render("mlship_inference_duration_seconds", model),
                "# HELP mlship_batch_size Rows per onnxruntime run.",
                "# TYPE mlship_batch_size histogram",
                *self.batch_size.render("mlship_batch_size", model),
                "# HELP mlship_queue_depth Requests waiting for the model.",
                "# TYPE mlship_queue_depth gauge",
                f"mlship_queue_depth{_labels(model)} {self.queue_depth}",
                "# HELP mlship_requests_in_flight HTTP requests received and not yet answered.",
                "# TYPE mlship_requests_in_flight gauge",
                f"mlship_requests_in_flight{_labels(model)} {self.in_flight}",
                "# HELP mlship_queue_rejected_total Requests refused with 503: queue full.",
                "# TYPE mlship_queue_rejected_total counter",
                f"mlship_queue_rejected_total{_labels(model)} {self.rejected}",
                "# HELP mlship_ready 1 when the model is loaded, warmed up and not draining.",
                "# TYPE mlship_ready gauge",
                f"mlship_ready{_labels(model)} {int(self.ready)}"]
        info = [*model, ("provider", self.provider), ("version", self.version)]
        if self.load_seconds is not None:
            out += ["# HELP mlship_model_load_seconds Session creation plus warm-up time.",
                    "# TYPE mlship_model_load_seconds gauge",
                    f"mlship_model_load_seconds{_labels(model)} {self.load_seconds!r}",
                    "# HELP mlship_model_info The provider and version in use (always 1).",
                    "# TYPE mlship_model_info gauge",
                    "mlship_model_info"
                    f"{_labels(info)} 1"]
        if self.execution_provider is not None:  # the PrometheusRule alerts on a CPU fallback
            requested, used = self.execution_provider
            out += ["# HELP mlship_execution_provider The onnxruntime execution provider in "
                    "use, and the one asked for (always 1).",
                    "# TYPE mlship_execution_provider gauge",
                    "mlship_execution_provider"
                    f"{_labels([*model, ('provider', used), ('requested', requested)])} 1"]
        for collect in self.collectors:
            out += collect()
        return ("\n".join(out) + "\n").encode()


def merge_expositions(parts: Sequence[tuple[bytes, frozenset[str]]]) -> bytes:
    """Concatenate Prometheus text expositions family by family.

    The format wants each family's samples in one group under a single HELP/TYPE pair, so the
    samples of every part are gathered under the first part's header lines; families in a
    part's skip set are left out of that part.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}
    for text, skip in parts:
        fresh: set[str] = set()
        current: list[str] | None = None
        for line in text.decode().splitlines():
            if line.startswith("#"):
                fields = line.split(" ", 3)
                if len(fields) < 3 or fields[1] not in ("HELP", "TYPE"):
                    continue
                name = fields[2]
                if name in skip:
                    current = None
                    continue
                if name not in families:
                    families[name] = ([], [])
                    fresh.add(name)
                if name in fresh:
                    families[name][0].append(line)
                current = families[name][1]
            elif line and current is not None:
                current.append(line)
    out = [line for header, samples in families.values() for line in (*header, *samples)]
    return ("\n".join(out) + "\n").encode()
