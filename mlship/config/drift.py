"""The ``drift:`` section of ``mlship.yaml``: input drift signals and their alerts (docs/drift.md).

With drift on, the baseline written by ``mlship baseline`` ships in a ConfigMap mounted into the
pod, the runtime exports per-feature input statistics against it, and the PrometheusRule gets
two alerts per feature: the window's mean moved away from the baseline mean, and too many values
fell outside the baseline's expected range.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mlship.config.fields import FieldProblem, Section
from mlship.config.fields import PrometheusDuration as Duration


class DriftSettings(Section):
    enabled: bool = Field(False, description="Ship the baseline, export per-feature input "
                                             "statistics and alert on drift.")
    baseline: str = Field("baseline.json", min_length=1,
                          description="Baseline written by `mlship baseline`, relative to "
                                      "mlship.yaml; shipped in a ConfigMap mounted read-only.")
    window: Duration = Field("15m", description="Traffic window the alerts compare with the "
                                                "baseline.")
    for_duration: Duration = Field("15m", description="How long drift must last before an "
                                                      "alert fires (the rule's `for`).")
    mean_shift_std: float = Field(1.0, gt=0, description="Alert when a feature's window mean is "
                                  "further than this many baseline standard deviations from "
                                  "the baseline mean.")
    out_of_range_share: float = Field(0.05, gt=0, le=1, description="Alert when more than this "
                                      "share of a feature's values fall outside the baseline's "
                                      "expected range (about 1 % do for unchanged inputs).")
    min_values: int = Field(100, ge=1, description="Values a feature needs in the window before "
                                                   "its alerts may fire: no traffic, no alert.")
    severity: Literal["info", "warning", "critical"] = Field(
        "warning", description="The severity label of the drift alerts.")

    @model_validator(mode="after")
    def _window(self) -> DriftSettings:
        if int("".join(c for c in self.window if c.isdigit())) == 0:
            raise FieldProblem("window", self.window, "must be longer than 0")
        return self
