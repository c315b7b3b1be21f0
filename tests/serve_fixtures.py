"""`xmodel2 serve` in a subprocess on a free port, for the tests that call it over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def running_server(model_dir: Path, *extra: str) -> Iterator[str]:
    """The server's base URL (http://127.0.0.1:PORT/v1) while the block runs; stopped after it."""
    process = subprocess.Popen([sys.executable, "-m", "xmodel2", "serve", str(model_dir), "--port", "0", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        if not found:
            process.kill()
            raise AssertionError(f"server did not start: {line}{process.stdout.read()}")
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)
