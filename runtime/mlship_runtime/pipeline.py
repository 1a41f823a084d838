"""A pipeline served as one V2 model: its steps' models run one after the other.

``plan_pipeline`` checks a pipeline of the repository file (mlship_runtime.repository) against
the loaded models' signatures once, before anything is ready: every mapped tensor exists on
both ends with the same datatype and rank, and every input of every step is fed. The pipeline's
inputs are its first step's inputs; its outputs are the declared ones (or the last step's).

``PipelineApp`` is the serving unit for one pipeline: an ``App`` (same routes, errors, request
metrics and readiness) whose infer runs each step through that model's own unit, in the order
a direct request to the model would take: its prediction cache when on, its batcher (so
requests from pipelines and direct requests are merged into the same runs), its drift counts.
A step whose outputs nothing needs (a subset of outputs was asked for) does not run. Errors
name the pipeline step and keep the status the model's unit gave them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from mlship_runtime import codec, predict
from mlship_runtime.app import App, _output_bytes
from mlship_runtime.asgi import JSON, Receive, Response, Scope, declared_length, infer_response
from mlship_runtime.errors import BadRequest, HTTPError, NotReady
from mlship_runtime.metrics import Metrics
from mlship_runtime.repository import REQUEST, PipelineSpec, RepositoryError, Source, Step
from mlship_runtime.settings import RuntimeSettings


class Signature(Protocol):
    """What a pipeline needs to know of a loaded model (a ``ModelSession`` has all of it)."""

    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    non_tensor_outputs: set[str]


@dataclass(frozen=True)
class StepPlan:
    name: str
    model: str
    feeds: tuple[tuple[str, Source], ...]  # every input of the model, in signature order
    outputs: tuple[str, ...]  # the model's outputs, in signature order


class PipelinePlan:
    """A checked pipeline: what feeds each step, and its V2 signature (also what
    ``predict.decode``/``encode`` read from a session: inputs, output_names, non_tensor_outputs)."""

    def __init__(self, name: str, steps: Sequence[StepPlan], outputs: Mapping[str, Source],
                 inputs: list[dict[str, Any]], output_meta: list[dict[str, Any]],
                 non_tensor_outputs: set[str]) -> None:
        self.steps = tuple(steps)
        self.outputs = dict(outputs)
        self.inputs = inputs
        self.output_names = list(self.outputs)
        self.datatypes = {m["name"]: m["datatype"] for m in output_meta}
        self.non_tensor_outputs = non_tensor_outputs
        # "ensemble" is what Triton reports for a pipeline of models; clients know it.
        self.metadata: dict[str, Any] = {
            "name": name, "versions": [], "platform": "ensemble", "inputs": inputs,
            "outputs": output_meta,
            "parameters": {"steps": [{"name": s.name, "model": s.model} for s in self.steps]}}
        self._needs: dict[tuple[str, ...], list[list[str]]] = {}

    def wanted(self, names: Sequence[str] | None) -> list[str]:
        if names is None:
            return self.output_names
        for name in names:
            if name not in self.outputs:
                raise BadRequest(f"unknown output '{name}'; the pipeline's outputs are "
                                 f"{self.output_names}")
        return list(names)

    def needs(self, names: Sequence[str]) -> list[list[str]]:
        """The outputs each step must compute for ``names``; a step needing none is skipped."""
        key = tuple(names)
        found = self._needs.get(key)
        if found is not None:
            return found
        needed: list[set[str]] = [set() for _ in self.steps]
        for name in names:
            step, tensor = self.outputs[name]
            if step >= 0:
                needed[step].add(tensor)
        for index in reversed(range(len(self.steps))):
            if needed[index]:
                for _, (step, tensor) in self.steps[index].feeds:
                    if step >= 0:
                        needed[step].add(tensor)
        found = [[o for o in plan.outputs if o in want]
                 for plan, want in zip(self.steps, needed, strict=True)]
        if len(self._needs) < 64:  # bounded: clients choose the subsets
            self._needs[key] = found
        return found


def plan_pipeline(spec: PipelineSpec, models: Mapping[str, Signature],
                  source: str) -> PipelinePlan:
    """Check ``spec`` against the loaded models: every mapped tensor exists on both ends with
    the same datatype and rank (fixed dimensions equal), and every input is fed."""
    first = models[spec.steps[0].model]
    tensors: dict[Source, dict[str, Any]] = {(-1, m["name"]): m for m in first.inputs}
    steps: list[StepPlan] = []
    for index, step in enumerate(spec.steps):
        model = models[step.model]
        feeds = _feeds(index, step, model, tensors, spec, source, models)
        for m in model.outputs:
            tensors[(index, m["name"])] = m
        steps.append(StepPlan(step.name, step.model, feeds,
                              tuple(m["name"] for m in model.outputs)))
    if spec.outputs is None:
        last = len(spec.steps) - 1
        outputs = {name: (last, name) for name in steps[-1].outputs}
    else:
        outputs = dict(spec.outputs)
        for name, src in spec.outputs:
            if src not in tensors:
                _missing(src, spec, f"{spec.where}.outputs.{name}", source, models)
    meta, non_tensor = [], set()
    for name, src in outputs.items():
        found = tensors[src]
        meta.append({"name": name, "datatype": found["datatype"], "shape": found["shape"]})
        if src[0] >= 0 and src[1] in models[spec.steps[src[0]].model].non_tensor_outputs:
            non_tensor.add(name)
    return PipelinePlan(spec.name, steps, outputs, list(first.inputs), meta, non_tensor)


def _feeds(index: int, step: Step, model: Signature, tensors: Mapping[Source, dict[str, Any]],
           spec: PipelineSpec, source: str,
           models: Mapping[str, Signature]) -> tuple[tuple[str, Source], ...]:
    """Where each input of ``step``'s model comes from: the request's tensors for the first
    step, else its mapping, else the previous step's output of the same name."""
    wanted = {m["name"]: m for m in model.inputs}
    mapped = dict(step.inputs)
    for name in mapped:
        if name not in wanted:
            raise RepositoryError(source, f"{step.where}.inputs.{name}", f"model '{step.model}' "
                                  f"has no input '{name}'; its inputs are {sorted(wanted)}")
    feeds: list[tuple[str, Source]] = []
    for name, meta in wanted.items():
        src = (-1, name) if index == 0 else mapped.get(name)
        if src is None and (index - 1, name) in tensors:
            src = (index - 1, name)
        if src is None:
            raise RepositoryError(
                source, f"{step.where}.inputs", f"input '{name}' of model '{step.model}' is "
                f"not fed; map it as {name}: STEP.TENSOR (an earlier step's output, or "
                f"{REQUEST}.INPUT for one of the pipeline's inputs)")
        _compatible(tensors, src, meta, spec, f"{step.where}.inputs.{name}",
                    f"input '{name}' of model '{step.model}'", source, models)
        feeds.append((name, src))
    return tuple(feeds)


def _compatible(tensors: Mapping[Source, dict[str, Any]], src: Source, want: dict[str, Any],
                spec: PipelineSpec, where: str, what: str, source: str,
                models: Mapping[str, Signature]) -> None:
    have = tensors.get(src)
    if have is None:
        _missing(src, spec, where, source, models)
        return
    same_dims = len(have["shape"]) == len(want["shape"]) and all(
        -1 in (a, b) or a == b for a, b in zip(have["shape"], want["shape"], strict=True))
    if have["datatype"] != want["datatype"] or not same_dims:
        raise RepositoryError(
            source, where, f"{_name(src, spec)} is {have['datatype']} {have['shape']} but "
            f"{what} needs {want['datatype']} {want['shape']}; the datatype must be the same "
            "(there is no conversion) and the rank too, with equal fixed dimensions")


def _missing(src: Source, spec: PipelineSpec, where: str, source: str,
             models: Mapping[str, Signature]) -> None:
    step, tensor = src
    if step < 0:
        first = models[spec.steps[0].model]
        raise RepositoryError(source, f"{where}", f"the pipeline has no input '{tensor}'; its "
                              f"inputs are those of its first step (model "
                              f"'{spec.steps[0].model}'): {[m['name'] for m in first.inputs]}")
    owner = spec.steps[step]
    raise RepositoryError(source, f"{where}", f"step '{owner.name}' (model '{owner.model}') "
                          f"has no output '{tensor}'; its outputs are "
                          f"{[m['name'] for m in models[owner.model].outputs]}")


def _name(src: Source, spec: PipelineSpec) -> str:
    step, tensor = src
    return f"'{REQUEST if step < 0 else spec.steps[step].name}.{tensor}'"


class _PlanSignature:
    """A pipeline's request is checked as its first step's model's, its outputs as its own."""

    def __init__(self, plan: PipelinePlan, first: Any) -> None:
        self.plan = plan
        self.first = first

    def check_input(self, name: str, datatype: str, shape: Sequence[int]) -> None:
        self.first.check_input(name, datatype, shape)

    def wanted(self, names: Sequence[str] | None) -> list[str]:
        return self.plan.wanted(names)


class PipelineApp(App):
    """Serves one pipeline over the model units it chains; ready once its plan is attached."""

    def __init__(self, spec: PipelineSpec, settings: RuntimeSettings, metrics: Metrics,
                 models: Mapping[str, App]) -> None:
        super().__init__(settings, metrics)
        self.spec = spec
        self.models = models
        self.plan: PipelinePlan | None = None

    def attach_plan(self, plan: PipelinePlan) -> None:
        """Called on the event loop thread once every model of the process is attached."""
        self.plan = plan
        self.ready = not self.draining
        self.metrics.ready = self.ready

    def _planned(self) -> PipelinePlan:
        if self.plan is None:
            raise NotReady("pipeline is not ready yet (its models are loading or warming up)")
        return self.plan

    async def _admit_plan(self, scope: Scope, receive: Receive) -> PipelinePlan:
        try:
            plan = self._planned()
            for step in plan.steps[:1]:
                self.models[step.model]._serving()[1].admit()
        except HTTPError as error:
            await self._refuse_body(receive, error, declared_length(scope))
        return plan

    async def _infer(self, scope: Scope, receive: Receive, started: float) -> Response:
        plan = await self._admit_plan(scope, receive)
        body, header_length = await self._read_body(scope, receive)
        first, _ = self.models[plan.steps[0].model]._serving()
        request = await self.offload(len(body), codec.decode_request, body, header_length,
                                     _PlanSignature(plan, first),
                                     self.settings.max_request_values)
        names = plan.wanted(request.outputs)
        outputs = await self._run(plan, request.inputs, request.datatypes, names, started)
        payload, length = await self.offload(
            _output_bytes(outputs), codec.encode_response, self.spec.name, None, request.id,
            [(name, plan.datatypes[name], out) for name, out in zip(names, outputs, strict=True)],
            request.binary_outputs)
        return infer_response(payload, length)

    async def _predict(self, scope: Scope, receive: Receive, started: float) -> Response:
        plan = await self._admit_plan(scope, receive)
        body, _ = await self._read_body(scope, receive)
        # A plan has what predict reads of a session: inputs, output_names, non_tensor_outputs.
        inputs, instances = await self.offload(len(body), predict.decode, body, plan,
                                               self.settings.max_request_values)
        outputs = await self._run(plan, inputs, {}, plan.output_names, started)
        encoded = await self.offload(_output_bytes(outputs), predict.encode, plan, outputs,
                                     instances)
        return 200, encoded, [(b"content-type", JSON)]

    async def _model_metadata(self, scope: Scope, receive: Receive, started: float) -> Response:
        plan = self._planned()
        return 200, orjson.dumps(plan.metadata), [(b"content-type", JSON)]

    async def _run(self, plan: PipelinePlan, inputs: dict[str, np.ndarray],
                   datatypes: Mapping[str, str], names: list[str],
                   started: float) -> list[np.ndarray]:
        # The request is checked as the pipeline's own inputs (its first step's), unprefixed.
        first, _ = self.models[plan.steps[0].model]._serving()
        rows = first.check(inputs, datatypes)
        tensors: dict[Source, np.ndarray] = {(-1, name): array for name, array in inputs.items()}
        for index, (step, wanted) in enumerate(zip(plan.steps, plan.needs(names), strict=True)):
            if not wanted:
                continue
            feed = {name: tensors[source] for name, source in step.feeds}
            try:
                outputs = await self._step(step, feed, rows if index == 0 else None, wanted,
                                           started)
            except HTTPError as error:  # a new error: a batch shares one among its requests
                raise type(error)(f"pipeline '{self.spec.name}' step {index + 1} "
                                  f"'{step.name}' (model '{step.model}'): {error.message}",
                                  status=error.status, headers=error.headers) from None
            for name, output in zip(wanted, outputs, strict=True):
                tensors[(index, name)] = output
        return [tensors[plan.outputs[name]] for name in names]

    async def _step(self, step: StepPlan, feed: dict[str, np.ndarray], rows: int | None,
                    wanted: list[str], started: float) -> list[np.ndarray]:
        unit = self.models[step.model]
        session, batcher = unit._serving()
        if rows is None:
            rows = session.check(feed, {})  # datatypes were matched when the plan was made
        remaining = self.settings.request_timeout_s - (time.perf_counter() - started)
        return await unit.run(session, batcher, feed, rows, wanted, remaining)
