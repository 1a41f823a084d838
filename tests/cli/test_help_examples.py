"""Every command's --help ends with one or two examples that use only options it has, and
`mlship serve` is a command like the others (its runtime options described, "did you mean")."""

from __future__ import annotations

import shlex

import pytest
import typer
from typer.testing import CliRunner

from mlship.cli import app
from mlship.cli.contract import iter_commands
from mlship.cli.examples import EXAMPLES

runner = CliRunner()
TREE = list(iter_commands(typer.main.get_command(app)))


def test_the_table_names_only_commands_that_exist() -> None:
    in_docstrings = {path for path, command in TREE if "Examples:" in (command.help or "")}
    assert set(EXAMPLES) | in_docstrings == {path for path, _ in TREE}
    assert not set(EXAMPLES) & in_docstrings


@pytest.mark.parametrize(("path", "command"), TREE, ids=[" ".join(p) for p, _ in TREE])
def test_every_help_shows_examples_using_real_options(path: tuple[str, ...], command) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("Examples:") == 1
    usage = result.stdout.splitlines()[0]
    assert "{model}" not in usage, usage  # arguments by their capital names
    section = result.stdout.split("Examples:", 1)[1].splitlines()
    examples = []
    for line in section:
        if line.strip().startswith("mlship "):
            examples.append(line.strip())
        elif line.strip() and examples:
            break  # the examples end where the next paragraph starts
    assert 1 <= len(examples) <= 2, examples
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for example in examples:
        words = shlex.split(example)
        assert words[:1 + len(path)] == ["mlship", *path], example
        own = words[:next((i for i, w in enumerate(words) if w in ("|", "&&", ">")),
                          len(words))]
        for word in own[1 + len(path):]:
            if word.startswith("-") and word != "-":
                assert word.split("=")[0] in options, (example, word)


def test_serve_help_describes_every_runtime_option_with_its_default() -> None:
    from mlship_runtime.settings import DECLARED

    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "Usage: mlship serve [OPTIONS] [MODEL]" in text
    assert "-c, --config" in text
    assert "python -m mlship_runtime" not in text
    for declared in DECLARED:
        if declared.name != "input_shapes":  # --shape NAME=DIMS (repeatable) stands for it
            assert declared.flag in text, declared.flag
            assert declared.env in text, declared.env
    assert "(default: 8080" in text


def test_a_mistyped_serve_option_is_one_usage_error_with_a_suggestion() -> None:
    result = runner.invoke(app, ["serve", "model.onnx", "--prot", "80"])
    assert result.exit_code == 2
    assert "No such option: --prot" in result.stderr
    assert "--port" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 4
