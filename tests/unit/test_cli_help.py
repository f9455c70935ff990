"""Every command explains itself with an example (`--help`), and docs/contract.md §6's command names exist."""

from __future__ import annotations

import argparse

import pytest

from arledger.cli import build_parser


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(prefix: str, current: argparse.ArgumentParser) -> None:
        for action in current._actions:  # argparse keeps sub-commands here
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found[f"{prefix}{name}".strip()] = child
                    walk(f"{prefix}{name} ", child)

    walk("", parser)
    return found


def test_design_commands_exist() -> None:
    names = set(commands())
    for name in ("broker start", "broker stop", "broker status", "run", "ingest", "report aging",
                 "report balances", "report exposure", "report worklist", "report kpis", "report allowance",
                 "report rollforward", "replay", "rebuild", "verify", "demo", "sql", "schema", "status"):
        assert name in names, f"arledger {name} is missing"


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_help_shows_an_example(name: str) -> None:
    parser = commands()[name]
    if any(isinstance(action, argparse._SubParsersAction) for action in parser._actions):
        return  # a group: its sub-commands carry the examples
    text = parser.format_help()
    assert "example" in text.lower(), f"'arledger {name} --help' shows no example"
