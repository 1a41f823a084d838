"""Synthetic requests for a canary that gets too little live traffic to be judged.

Inputs come from the model's own signature (``mlship_runtime.signature.sample_inputs``, the
same generator as the runtime's warm-up and ``mlship predict``), sent to a URL that reaches the
canary from where mlship runs: a port-forward or an ingress. mlship never dials pod or Service
IPs itself. Failures are only counted: the metrics, not this sender, decide the analysis.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class SyntheticTraffic:
    url: str
    model: str
    rps: float
    sent: int = 0
    failed: int = 0
    last_error: str | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def send(self, count: int, over_s: float) -> int:
        """Start sending ``count`` requests (at most ``rps``) spread over ``over_s`` seconds in
        the background (a batch still running is stopped); returns how many will be sent."""
        self.stop()
        count = max(0, min(count, int(self.rps * over_s)))
        if count == 0:
            return 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(count, over_s / count),
                                        name="mlship-synthetic", daemon=True)
        self._thread.start()
        return count

    def _run(self, count: int, spacing_s: float) -> None:
        from mlship.errors import MlshipError
        from mlship.model.inputs import load_inputs
        from mlship.serving.client import RuntimeClient

        client = RuntimeClient(self.url, timeout_s=10.0)
        try:
            inputs = load_inputs(None, client.metadata(self.model))
        except MlshipError as err:
            self.failed += count
            self.last_error = err.message
            return
        started = time.monotonic()
        for index in range(count):
            if self._stop.wait(max(0.0, started + index * spacing_s - time.monotonic())):
                return
            try:
                client.infer(self.model, inputs)
            except MlshipError as err:
                self.failed += 1
                self.last_error = err.message
            self.sent += 1

    @property
    def running(self) -> bool:
        """A batch is still being sent."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self.wait(15.0)
