"""`--help` as users read it: every example is its own line, text in [brackets] survives."""

from __future__ import annotations

import re

from typing import Any

import pytest
import typer

from arssr_rt.cli import app, main

EXAMPLE = re.compile(r"^\s+((?:arssr-rt|docker|torchrun) .*?)\s*(?:\\)?$")


def _commands() -> dict[str, Any]:
    """Every leaf command by its argv path ("qc", "engines build", ...)."""
    found: dict[str, Any] = {}

    def walk(prefix: str, command: Any) -> None:
        if hasattr(command, "commands"):  # a group (typer ships its own click)
            for name, sub in command.commands.items():
                walk(f"{prefix} {name}".strip(), sub)
        else:
            found[prefix] = command

    walk("", typer.main.get_command(app))
    return found


COMMANDS = _commands()


def _examples(command: Any) -> list[str]:
    return [m.group(1) for line in (command.help or "").splitlines() if (m := EXAMPLE.match(line))]


def test_the_commands_with_examples_are_found():
    with_examples = {name for name, command in COMMANDS.items() if _examples(command)}
    assert {"qc", "export-triton", "bench", "batch", "upsample", "evaluate"} <= with_examples


@pytest.mark.parametrize("name", sorted(n for n, c in COMMANDS.items() if _examples(c)))
def test_each_help_example_is_its_own_line(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main([*name.split(), "--help"]) == 0
    shown = [line.strip().rstrip("\\").strip() for line in capsys.readouterr().out.splitlines()]
    for example in _examples(COMMANDS[name]):
        assert example in shown, f"{name} --help folds the example {example!r} into other text"


def test_bracketed_help_text_is_shown_verbatim(capsys, monkeypatch):
    """Guard (passes on main too): help is not rich markup, "[.shard-I-of-N]" is not a style tag."""
    assert main(["batch", "--help"]) == 0
    assert "batch_report[.shard-I-" in capsys.readouterr().out  # wrapped after the hyphen at 80 columns
