"""Drift in the render context: the baseline ConfigMap, its mount, and the alert rules.

The rules are computed from the runtime's counters over ``drift.window`` (docs/drift.md):

- **MlshipInputDrift**: ``|window mean - baseline mean| / baseline std > mean_shift_std``, where
  the window mean is ``increase(sum) / increase(count)`` summed over the pods of one model.
- **MlshipInputOutOfRange**: ``increase(out_of_range) / increase(count) > out_of_range_share``.

Both only where the feature had at least ``min_values`` values in the window, so a quiet model
never alerts. The baseline gauges every pod exports make the expressions self-contained.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlship.config.paths import DRIFT_DIR
from mlship.render.specs import Drift

if TYPE_CHECKING:
    from mlship.config.schema import MlshipConfig
    from mlship.model.baseline import BaselineFile
    from mlship.model.facts import ModelSignature

MOUNT_DIR = DRIFT_DIR
BASELINE_KEY = "baseline.json"
BASELINE_PATH = f"{MOUNT_DIR}/{BASELINE_KEY}"  # where the runtime reads it in the pod
# ConfigMaps hold at most 1 MiB; leave room for metadata.
MAX_BASELINE_BYTES = 1000 * 1024
# The series of one feature across pods; track separates a canary (its own model and baseline).
GROUP_BY = ("namespace", "job", "model", "track", "input", "feature")


def drift_spec(config: MlshipConfig, signature: ModelSignature | None,
               baseline: BaselineFile | None, selector: str) -> Drift | None:
    """Everything the templates print for drift, or None when it is off. Without ``baseline``
    the file ``drift.baseline`` is read (``load_config`` made it relative to mlship.yaml's
    directory): the one file rendering reads, checked against the model when inspected."""
    from mlship.errors import ConfigError

    drift = config.drift
    if not drift.enabled:
        return None
    if baseline is None:
        baseline = load_baseline(Path(drift.baseline), signature)
    text = baseline.text
    if len(text.encode()) > MAX_BASELINE_BYTES:
        raise ConfigError(f"drift.baseline: {baseline.path} is {len(text.encode())} bytes, more "
                          f"than a ConfigMap holds ({MAX_BASELINE_BYTES})",
                          hint="rerun `mlship baseline` with a lower --max-features")
    # The content hash in the name: a new baseline is a new ConfigMap, so the pod template
    # changes and pods roll, and pods of an older version keep the baseline they started with.
    name = f"{config.name}-drift-{baseline.sha256[:10]}"
    return Drift(
        configmap=name,
        baseline_key=BASELINE_KEY,
        baseline_json=text,
        baseline_sha256=baseline.sha256,
        path=BASELINE_PATH,
        volume={"name": "drift-baseline", "configMap": {"name": name, "defaultMode": 0o444}},
        mount={"name": "drift-baseline", "mountPath": MOUNT_DIR, "readOnly": True},
        group=f"{config.name}.drift.rules",
        rules=alert_rules(config, selector),
    )


def load_baseline(path: Path, signature: ModelSignature | None) -> BaselineFile:
    from mlship.errors import BadInputError, ConfigError
    from mlship.model.baseline import read_baseline_file

    if not path.is_file():
        raise ConfigError(f"drift.baseline: no such file ({path})",
                          hint="write it with `mlship baseline --input SAMPLES --model MODEL "
                               "--out FILE`, or set drift.enabled: false")
    try:
        return read_baseline_file(path, signature, "drift.baseline")
    except BadInputError as err:  # a file the config names: a config mistake (same exit code)
        raise ConfigError(err.message, hint=err.hint) from None


def alert_rules(config: MlshipConfig, selector: str) -> list[dict[str, Any]]:
    """The two PrometheusRule rules, as plain dicts in PrometheusRule field names."""
    drift = config.drift
    by = ", ".join(GROUP_BY)
    window = drift.window

    def total(metric: str, extra: str = "") -> str:
        return (f"sum by ({by}) (increase({metric}{{{selector}{extra}}}[{window}]))")

    def baseline(metric: str, filter_: str = "") -> str:
        # Every pod exports the same gauge; avg folds the copies into one series per feature.
        return f"avg by ({by}) ({metric}{{{selector}}}{filter_})"

    count = total("mlship_input_feature_count_total")
    enough = f"and on ({by}) {count} >= {drift.min_values}"
    window_mean = f"{total('mlship_input_feature_sum_total')} / {count}"
    # std == 0 (a constant feature) would divide by zero; the out-of-range alert covers it.
    shift = (f"abs({window_mean} - on ({by}) {baseline('mlship_input_baseline_mean')}) "
             f"/ on ({by}) {baseline('mlship_input_baseline_std', ' > 0')}")
    share = f"{total('mlship_input_out_of_range_total')} / on ({by}) {count}"
    where = "input {{ $labels.input }} feature {{ $labels.feature }} of " + config.name
    return [
        {"alert": "MlshipInputDrift",
         "expr": f"({shift}) > {drift.mean_shift_std:g} {enough}",
         "for": drift.for_duration,
         "labels": {"severity": drift.severity},
         "annotations": {
             "summary": f"Input drift: the mean of {where} moved from the baseline",
             "description": "Over " + window + ", the mean of " + where + " is "
                            "{{ $value | printf \"%.2f\" }} baseline standard deviations from "
                            f"the baseline mean (alert above {drift.mean_shift_std:g})."}},
        {"alert": "MlshipInputOutOfRange",
         "expr": f"({share}) > {drift.out_of_range_share:g} {enough}",
         "for": drift.for_duration,
         "labels": {"severity": drift.severity},
         "annotations": {
             "summary": f"Input drift: values of {where} outside the baseline range",
             "description": "Over " + window + ", {{ $value | humanizePercentage }} of the "
                            "values of " + where + " fell outside the baseline's expected range "
                            f"(alert above {drift.out_of_range_share:.1%})."}},
    ]
