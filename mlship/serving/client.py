"""A small client of a running mlship runtime: find the model, build inputs, infer, decode.

Request encoding and response decoding are the runtime's own (``mlship_runtime.codec``), so
the client and the server cannot disagree about the V2 wire format. Only the standard
library's HTTP client is used: no extra dependency for one request.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlship.errors import BadInputError, ServerError


@dataclass(frozen=True)
class Prediction:
    model: str
    outputs: dict[str, np.ndarray]
    latency_ms: float


class RuntimeClient:
    """Talks to one runtime at ``base_url`` (``http://127.0.0.1:8080``)."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def served_names(self) -> list[str]:
        """Every model and pipeline served, from the V2 repository index."""
        _, body = self._request("POST", "/v2/repository/index", b"{}",
                                {"Content-Type": "application/json"})
        return [entry["name"] for entry in json.loads(body)]

    def metrics_text(self) -> str:
        """The Prometheus exposition of ``/metrics``."""
        _, body = self._request("GET", "/metrics")
        return body.decode()

    def model_name(self) -> str:
        """The served model's name, when the server serves exactly one."""
        models = self.served_names()
        if len(models) != 1:
            raise BadInputError(f"{self.base_url} serves {len(models)} models "
                                f"({', '.join(models)}); choose one with --model")
        return models[0]

    def metadata(self, model: str) -> dict[str, Any]:
        _, body = self._request("GET", f"/v2/models/{model}")
        metadata: dict[str, Any] = json.loads(body)
        return metadata

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                status, _ = self._request("GET", "/v2/health/ready", expect_ok=False)
            except ServerError:
                status = 0
            if status == 200:
                return True
            time.sleep(0.05)
        return False

    def infer(self, model: str, inputs: dict[str, np.ndarray], *,
              binary: bool = False) -> Prediction:
        from mlship_runtime import codec

        body, headers = codec.encode_request(inputs, binary=binary, binary_outputs=binary)
        started = time.perf_counter()
        _, response_body, response_headers = self._request_full(
            "POST", f"/v2/models/{model}/infer", body, headers)
        latency_ms = (time.perf_counter() - started) * 1000
        outputs = codec.decode_response(response_body, response_headers)
        return Prediction(model, outputs, latency_ms)

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, *,
                 expect_ok: bool = True) -> tuple[int, bytes]:
        status, data, _ = self._request_full(method, path, body, headers, expect_ok=expect_ok)
        return status, data

    def _request_full(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None, *,
                      expect_ok: bool = True) -> tuple[int, bytes, dict[str, str]]:
        url = self.base_url + path
        request = urllib.request.Request(url, data=body, method=method,
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read(), dict(response.headers.items())
        except urllib.error.HTTPError as err:
            data = err.read()
            if not expect_ok:
                return err.code, data, dict(err.headers.items())
            raise ServerError(f"{method} {url} failed with HTTP {err.code}: "
                              f"{_error_text(data)}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ServerError(f"cannot reach {self.base_url}: {reason}",
                              hint="start a server with `mlship serve MODEL`, or pass --url",
                              ) from None


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]
