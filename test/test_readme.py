"""The README's instructions work as written: its first two commands are ``make demo`` and ``make test``, and
every ``dynaguide`` command in its code blocks exists, its ``--help`` succeeds and its arguments parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _code_lines(text: str) -> list[str]:
    """Shell lines of the fenced code blocks, continuation lines joined, comments removed."""
    lines, joined = [], ""
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        for raw in block.splitlines():
            line = raw.split(" #", 1)[0].rstrip()
            if line.endswith("\\"):
                joined += line[:-1] + " "
                continue
            lines.append((joined + line).strip())
            joined = ""
    return [x for x in lines if x]


def readme_commands() -> list[list[str]]:
    commands = []
    for line in _code_lines(README.read_text()):
        words = shlex.split(line)
        if not words or not words[0].endswith("dynaguide"):
            continue
        line = re.sub(r"\[[^\]]*\]", "", line)               # optional parts written as [--flag VALUE]
        commands.append([w for w in shlex.split(line)[1:] if w != "..."])
    return commands


def test_the_first_two_commands_set_up_and_run_the_demo_then_the_tests():
    assert _code_lines(README.read_text())[:2] == ["make demo", "make test"]


def test_the_readme_has_commands_to_check():
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_exists_and_parses(argv, capsys):
    from dynaguide_cli.main import build_parser

    prefix = []
    for word in argv:
        if word.startswith("-"):
            break
        prefix.append(word)
    with pytest.raises(SystemExit) as exc:
        build_parser(prefix).parse_args([*prefix, "--help"])
    assert exc.value.code == 0, capsys.readouterr().err
    args = build_parser(argv).parse_args(argv)       # argparse exits (code 2) on an unknown command or flag
    assert callable(getattr(args, "func", None)), argv
