"""Entry point of a ratio-search worker process: `python -m xmodel2.ratio_search.worker SPEC.json`."""

from __future__ import annotations

import sys
from pathlib import Path

from xmodel2.errors import UserError


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)  # the search runs one worker per core
    from xmodel2.ratio_search.study import worker_loop

    try:
        worker_loop(Path(argv[0]))
    except UserError as exc:
        print(f"xmodel2: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
