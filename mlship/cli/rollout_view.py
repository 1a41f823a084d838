"""How rollout progress reads on stderr: one line per event, a live status line on a terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlship.cli import output

if TYPE_CHECKING:
    from rich.console import Console

    from mlship.rollout.state import RolloutState


def _pct(value: float) -> str:
    return f"{value:g} %"


class RolloutView(output.LiveDisplay):
    """Driver events -> lines (and, on a TTY, a spinner counting down to the next analysis)."""

    def __init__(self, console: Console, live: bool) -> None:
        self.status = console.status("starting the rollout") if live else None
        super().__init__(console, self.status)
        self.current = ""

    def _say(self, line: str) -> None:
        from rich.markup import escape

        self.console.print(escape(line), soft_wrap=True)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        from rich.markup import escape

        if kind == "wait":
            if self.status is not None:
                self.status.update(escape(f"{self.current}: analysis in "
                                          f"{data['remaining_s']:.0f} s"))
            return
        line = _line(kind, data)
        if kind == "step":
            self.current = line
        if line:
            self._say(line)


def _line(kind: str, data: dict[str, Any]) -> str:  # noqa: PLR0911 - one line per event kind
    if kind == "started":
        steps = ", ".join(_pct(step) for step in data["steps"])
        plan = "switch at once" if data["strategy"] == "bluegreen" else \
            "mirror a sample of requests to it, compare the answers" \
            if data["strategy"] == "shadow" else \
            f"{len(data['steps'])} bandit rounds" if data["strategy"] == "bandit" else \
            f"steps {steps}"
        return (f"rollout {data['strategy']} of {data['image']} (revision {data['revision']}, "
                f"stable {data['stable_image']}): {plan}, traffic via {data['traffic']}")
    if kind == "step":
        pods = f"{data['canary_replicas']} pod{'s' if data['canary_replicas'] != 1 else ''}"
        if data["weight"] == 0:
            return f"check {data['step']}/{data['steps']}: header-matched requests to the " \
                   f"canary ({pods})"
        return f"step {data['step']}/{data['steps']}: canary at {_pct(data['weight'])} ({pods})"
    if kind == "routed":
        if data["effective_weight"] != data["weight"]:
            return f"  routed: the replica ratio gives the canary " \
                   f"{_pct(data['effective_weight'])} of the pods"
        return ""
    if kind == "round":
        weights = ", ".join(f"{image} {_pct(weight)}" for image, weight in
                            data["weights"].items())
        seen = "; ".join(_reward(entry) for entry in data["rewards"])
        return f"round {data['round']}/{data['rounds']}: {weights}" + (f" ({seen})" if seen
                                                                       else "")
    if kind == "synthetic":
        return f"  sending {data['requests']} synthetic requests to {data['url']}"
    if kind == "analysis":
        stable = data.get("stable") or {}
        context = ""
        if stable.get("success_rate") is not None:
            context = f" (stable: success rate {stable['success_rate'] * 100:.1f} %"
            if stable.get("p99_ms") is not None:
                p99 = stable["p99_ms"]
                context += f", p99 {p99:.0f} ms" if p99 >= 10 else f", p99 {p99:.1f} ms"
            context += ")"
        return f"  analysis: {data['status']}: {data['reason']}{context}"
    return _end_line(kind, data)


_END_LINES = {
    "promoting": "promoting {image}: updating the stable Deployment",
    "promoted": "promoted {image}: the stable Deployment runs it, canary scaled to zero",
    "aborting": "aborting: {reason}",
    "aborted": "aborted: traffic back on {stable_image}, canary scaled to zero",
    "switched": "switched all traffic to {image}; {stable_image} stays up: `mlship rollout "
                "undo` switches back, `mlship rollout promote` finishes",
    "paused": "every step passed; paused at {weight} %: `mlship rollout promote` finishes, "
              "`mlship rollout abort` undoes it",
    "info": "{message}",
}


def _reward(entry: dict[str, Any]) -> str:
    """``canary: 41 requests, success 51.2 %, reward 0.512`` (one arm, one interval)."""
    if "error" in entry:
        return f"{entry['track']}: {entry['error']}"
    text = f"{entry['track']}: {entry['requests']} requests"
    if entry.get("success_rate") is not None:
        text += f", success {entry['success_rate'] * 100:.1f} %"
    if entry.get("reward") is not None:
        text += f", reward {entry['reward']:.3g}"
    return text


def _end_line(kind: str, data: dict[str, Any]) -> str:
    return _END_LINES.get(kind, "").format(**data)


def summary_lines(namespace: str, name: str, state: RolloutState | None) -> list[str]:
    """What `mlship rollout status` prints."""
    if state is None:
        return [f"{namespace}/{name}: no rollout recorded"]
    lines = [f"{namespace}/{name}: {state.strategy} rollout of {state.image} is {state.phase}"]
    if state.arms and state.phase not in ("promoted", "aborted", "undone"):
        progress = f"{state.bandit.round}/{state.bandit.rounds}" if state.bandit else "0/0"
        weights = ", ".join(f"{arm.image} {_pct(arm.weight)}" for arm in state.arms)
        lines.append(f"  round {progress}: {weights}")
    elif state.step >= 0 and state.phase not in ("promoted", "aborted", "undone"):
        effective = f" (replica ratio {_pct(state.effective_weight)})" \
            if state.effective_weight != state.weight else ""
        lines.append(f"  step {state.step + 1}/{len(state.steps)}, canary at "
                     f"{_pct(state.weight)}{effective}")
    if state.phase == "promoted":
        lines.append(f"  now stable: {state.image} (it replaced {state.stable_image}); started "
                     f"{state.started}, updated {state.updated} by {state.owner}")
    else:
        lines.append(f"  stable {state.stable_image}; started {state.started}, updated "
                     f"{state.updated} by {state.owner}")
    analyses = [entry.details for entry in state.history if entry.event == "analysis"]
    if analyses:
        last = analyses[-1]
        lines.append(f"  last analysis (step {last['step']}): {last['status']}: {last['reason']}")
    if state.reason:
        lines.append(f"  reason: {state.reason}")
    lines += _next(state)
    return lines


def _next(state: RolloutState) -> list[str]:
    """What to run now, when the rollout waits for somebody."""
    if state.undriven:
        age = state.seconds_since_update()
        resume = "`mlship rollout canary --resume` continues it, " \
            if state.strategy in ("canary", "ab") and state.phase == "progressing" else ""
        return [f"  nothing is driving it: no update for {age:.0f} s (the process {state.owner} "
                f"stopped?); {resume}`mlship rollout promote` finishes it, `mlship rollout "
                "abort` undoes it"]
    if state.phase == "paused":
        return ["  next: `mlship rollout promote` makes it the stable, `mlship rollout abort` "
                "returns to the stable"]
    if state.phase == "switched":
        return ["  next: `mlship rollout promote` finishes the switch, `mlship rollout undo` "
                "switches back"]
    return []
