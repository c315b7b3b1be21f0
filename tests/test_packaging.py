"""What an install gives: every command loads (a broken one is an error, never a missing command),
and a wheel installed outside the source tree carries its bundled data and trains the default."""

from __future__ import annotations

import importlib
import sys

import pytest

import xmodel2.commands
from xmodel2.cli import COMMANDS, CommandLoadError, build_parser, main


def subcommand_names(parser) -> set[str]:
    return {name for action in parser._subparsers._group_actions for name in action.choices}


def test_every_command_loads():
    assert subcommand_names(build_parser()) == set(COMMANDS)


@pytest.fixture
def extra_command_folder(tmp_path, monkeypatch):
    """A folder searched for `xmodel2.commands.*` modules, as if more had been installed."""
    monkeypatch.setattr(xmodel2.commands, "__path__", [*xmodel2.commands.__path__, str(tmp_path)])
    importlib.invalidate_caches()
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("xmodel2.commands.broken_")]:
        del sys.modules[name]


@pytest.mark.parametrize("source, cause", [
    (None, "No module named 'xmodel2.commands.broken_missing'"),  # listed but not installed
    ("import xmodel2_no_such_dependency\n", "No module named 'xmodel2_no_such_dependency'"),
    ("HELP = 'x'\ndef add_arguments(parser:\n", "SyntaxError"),
])
def test_a_command_that_fails_to_import_is_an_error_naming_it(extra_command_folder, monkeypatch, capsys,
                                                              source, cause):
    module = "broken_missing" if source is None else "broken_module"
    if source is not None:
        (extra_command_folder / f"{module}.py").write_text(source, encoding="utf-8")
    monkeypatch.setitem(COMMANDS, "broken", module)
    with pytest.raises(CommandLoadError, match="'broken'") as caught:
        build_parser()
    assert cause in str(caught.value)
    assert main(["--help"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xmodel2: error: command 'broken'") and cause in err
