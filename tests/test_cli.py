"""The top-level command: help lists every subcommand, unknown input exits 2."""

import subprocess
import sys

from xmodel2.cli import COMMANDS, main


def test_help_lists_every_subcommand():
    proc = subprocess.run([sys.executable, "-m", "xmodel2", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert name in proc.stdout
    for name in COMMANDS:
        sub = subprocess.run([sys.executable, "-m", "xmodel2", name, "--help"], capture_output=True,
                             text=True)
        assert sub.returncode == 0, (name, sub.stderr)


def exit_code(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse rejects bad usage itself, with status 2
        return exc.code


def test_unknown_arguments_exit_2(capsys):
    assert exit_code(["generate", "some-dir", "--prompt", "x", "--bogus"]) == 2
    assert exit_code(["nosuchcommand"]) == 2
    assert "--bogus" in capsys.readouterr().err
