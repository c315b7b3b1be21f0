"""The top-level command: help lists every subcommand, unknown input exits 2."""

import os
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


def test_the_program_keeps_freed_memory_unless_told_not_to():
    code = "from xmodel2.train.hardware import keep_freed_memory_for_reuse as keep; print(keep())"
    env = {k: v for k, v in os.environ.items() if k != "XMODEL2_SYSTEM_MALLOC"}
    tuned = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    untouched = subprocess.run([sys.executable, "-c", code], env={**env, "XMODEL2_SYSTEM_MALLOC": "1"},
                               capture_output=True, text=True)
    assert tuned.stdout.strip() == ("True" if sys.platform.startswith("linux") else "False")
    assert untouched.stdout.strip() == "False"
    run = subprocess.run([sys.executable, "-m", "xmodel2", "--version"], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip()


def test_bad_usage_is_one_line_naming_the_command(capsys):
    assert exit_code(["generate", "some-dir", "--prompt", "x", "--max-new-tokens", "1e11"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "xmodel2: error: generate: argument --max-new-tokens: invalid int value: '1e11'"]


def test_os_errors_name_the_path_or_the_output():
    import errno

    from xmodel2.cli import os_error_line

    assert os_error_line(PermissionError(errno.EACCES, "Permission denied", "/x/y")) == "/x/y: Permission denied"
    full = OSError(errno.ENOSPC, "No space left on device")
    assert os_error_line(full, "out/shards") == "out/shards: No space left on device"
    temporary = OSError(errno.EROFS, "Read-only file system", "out/.shards.tmp")
    assert os_error_line(temporary, "out/shards") == "out/shards: Read-only file system"
    assert os_error_line(OSError(errno.EAGAIN, "Resource temporarily unavailable")) is None  # a bug: traceback
