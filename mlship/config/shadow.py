"""The ``rollout.shadow`` section of ``mlship.yaml``: how `mlship rollout shadow` mirrors
requests and how answers are compared, for the runtime's mirroring and `mlship compare` alike.

The tolerance keys and their defaults are the runtime's (``mlship_runtime.compare.Tolerance``),
and the mirroring bounds are runtime settings (``shadow_sample_rate``,
``shadow_max_per_second``): declared there once, bound here.
"""

from __future__ import annotations

from typing import Literal, cast

from mlship_runtime.compare import Tolerance, Tolerances
from pydantic import Field

from mlship.config.fields import Duration, Section
from mlship.config.runtime import RuntimeSection, runtime_field

_DEFAULT = Tolerance()
Kind = Literal["auto", "numeric", "exact", "top1"]


class OutputTolerance(Section):
    compare: Kind = Field(cast(Kind, _DEFAULT.compare), description=(
        "numeric: max |old - new| within absolute + relative x the old output's largest "
        "magnitude; exact: every element equal (labels, strings); "
        "top1: the same arg-max per row (class probabilities); auto: exact for non-float "
        "outputs, top1 for probabilities, numeric otherwise."))
    absolute: float = Field(_DEFAULT.absolute, ge=0, allow_inf_nan=False,
                            description="Absolute part of the numeric tolerance.")
    relative: float = Field(_DEFAULT.relative, ge=0, allow_inf_nan=False,
                            description="Relative part of the numeric tolerance (0.01: 1 % of "
                                        "the output's largest magnitude).")
    max_disagreement: float = Field(_DEFAULT.max_disagreement, ge=0, le=1,
                                    description="Largest share of compared requests that may "
                                                "disagree on this output.")

    def tolerance(self) -> Tolerance:
        return Tolerance(self.compare, self.absolute, self.relative, self.max_disagreement)


class ShadowSettings(RuntimeSection):
    sample_rate: float = runtime_field("shadow_sample_rate", description="Share of the "
                                       "stable's V2 infer requests mirrored to the shadow.")
    max_per_second: float = runtime_field("shadow_max_per_second", description="Most "
                                          "requests mirrored per second per stable worker.")
    min_compared: int = Field(100, ge=1, description="Compared requests needed for a verdict "
                              "(synthetic requests make up for too little live traffic).")
    timeout: Duration = Field("10m", description="Longest wait for min_compared compared "
                              "requests; the shadow fails when they do not arrive.")
    tolerance: OutputTolerance = Field(default_factory=OutputTolerance,
                                       description="Tolerance of every output not in outputs.")
    outputs: dict[str, OutputTolerance] = Field({}, description="Tolerances by output name "
                                                "(NAME), over tolerance.")

    def tolerances(self) -> Tolerances:
        return Tolerances(self.tolerance.tolerance(),
                          {name: t.tolerance() for name, t in self.outputs.items()})
