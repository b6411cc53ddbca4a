"""The configuration reference lists every command and option the CLI has."""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy.cli import build_parser

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _commands(parser: argparse.ArgumentParser, prefix: list[str]) -> list[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(" ".join(prefix), parser)]
    return [c for name, sub in subs[0].choices.items() for c in _commands(sub, [*prefix, name])]


def test_the_reference_documents_every_command_and_option() -> None:
    text = REFERENCE.read_text()
    sections = {s.split("`")[1].removeprefix("pedstream "): s for s in text.split("\n## ")[1:]}
    for command, parser in _commands(build_parser(), []):
        assert command in sections, f"docs/configuration.md lacks `pedstream {command}`"
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag not in ("--help", "--bootstrap", "--redis", "--topic-prefix"):
                    assert flag in sections[command], f"`pedstream {command}`: {flag} is not documented"
