"""Entry point of a ratio-search worker process:
`python -m xmodel2.ratio_search.worker SPEC.json DEVICE THREADS`."""

from __future__ import annotations

import sys
from pathlib import Path

from xmodel2.errors import UserError


def main(argv: list[str]) -> int:
    import torch

    spec, device, threads = argv
    torch.set_num_threads(int(threads))  # the workers of one machine split its cores
    from xmodel2.ratio_search.study import worker_loop

    try:
        worker_loop(Path(spec), device)
    except UserError as exc:
        print(f"xmodel2: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
