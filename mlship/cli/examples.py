"""One or two examples for every command's ``--help``, declared once and attached to the click
command tree as it is built (``mlship.cli._Group``); a test walks the tree for missing ones.
A command whose docstring has its own ``Examples:`` paragraph is not listed here."""

from __future__ import annotations

from typing import Any

EXAMPLES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("optimize",): ("mlship optimize model.onnx",
                    "mlship optimize model.onnx --max-deviation 1e-3 --json"),
    ("serve",): ("mlship serve model.onnx --port 8080",
                 "mlship serve -c mlship.yaml --log-format text"),
    ("predict",): ("mlship predict", "mlship predict --url http://127.0.0.1:8080 -i input.json"),
    ("demo",): ("mlship demo",),
    ("init",): ("mlship init model.onnx", "mlship init model.onnx --name fraud --shape x=1x4"),
    ("render",): ("mlship render", "mlship render --out - | kubectl apply --dry-run=client -f -"),
    ("schema",): ("mlship schema > mlship.schema.json", "mlship schema build"),
    ("build",): ("mlship build --smoke", "mlship build --context-only ctx && docker build ctx"),
    ("push",): ("mlship push", "mlship push 127.0.0.1:5000/iris:model-857fa25c602b"),
    ("deploy",): ("mlship deploy --dry-run client", "mlship deploy --context kind-mlship"),
    ("diff",): ("mlship diff", "mlship diff --exit-code"),
    ("delete",): ("mlship delete --dry-run", "mlship delete --delete-namespace"),
    ("ci", "github"): ("mlship ci github",
                       "mlship ci github --mlship-source 'mlship==0.1.0' --smoke"),
    ("ci", "gitlab"): ("mlship ci gitlab", "mlship ci gitlab --branch main --no-smoke"),
    ("model", "push"): ("mlship model push model.onnx s3://models/iris/1/",),
    ("model", "pull"): ("mlship model pull s3://models/iris/1/ --out ./iris",),
    ("model", "ls"): ("mlship model ls s3://models/iris/",),
    ("batch",): ("mlship batch model.onnx --input in/ --output out/",),
    ("baseline",): ("mlship baseline --input samples.npy --model model.onnx",),
    ("compare",): ("mlship compare model.onnx model.fp16.onnx",
                   "mlship compare old.onnx new.onnx --input requests/ --json"),
    ("rollout", "shadow"): ("mlship rollout shadow --image 127.0.0.1:5000/iris:v2",
                            "mlship rollout shadow --image 127.0.0.1:5000/iris:v2 "
                            "--promote-on-pass"),
    ("rollout", "canary"): ("mlship rollout canary --image 127.0.0.1:5000/iris:v2",
                            "mlship rollout canary --resume"),
    ("rollout", "ab"): ("mlship rollout ab --image 127.0.0.1:5000/iris:v2 --iterations 6",),
    ("rollout", "bluegreen"): ("mlship rollout bluegreen --image 127.0.0.1:5000/iris:v2",),
    ("rollout", "bandit"): ("mlship rollout bandit --image 127.0.0.1:5000/iris:v2 --rounds 10",),
    ("rollout", "promote"): ("mlship rollout promote",),
    ("rollout", "abort"): ("mlship rollout abort --reason 'p99 too high'",),
}


def assign_examples(group: Any, path: tuple[str, ...] = ()) -> None:
    """Every command below ``group`` ends its help with its examples (a ``\\b`` paragraph:
    click keeps its lines as written)."""
    for name, command in group.commands.items():
        sub = (*path, name)
        if hasattr(command, "commands"):
            assign_examples(command, sub)
            continue
        for param in command.params:  # MODEL in the usage line, as the docstrings name it
            if getattr(param, "param_type_name", "") == "argument" and param.metavar is None:
                param.metavar = str(param.name).upper()
        lines = EXAMPLES.get(sub)
        if lines and "Examples:" not in (command.help or ""):  # else its docstring has them
            command.epilog = "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
