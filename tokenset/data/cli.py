"""``python -m tokenset.data``: prepare the data set of a params file and print its summary."""

from __future__ import annotations

import json
from collections.abc import Sequence

from tokenset.data.datasets import prepare, summary

__all__ = ["main"]

def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tokenset.data [--params params.yaml] [--force]``: prepare the data and print its summary."""
    import argparse
    import time

    from tokenset.config import load_params

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--force", action="store_true", help="re-prepare even if the cache is valid")
    args = parser.parse_args(argv)
    cfg = load_params(args.params, "data")
    start = time.perf_counter()
    path = prepare(cfg, force=args.force)
    print(json.dumps({"prepared": str(path), "seconds": round(time.perf_counter() - start, 2), **summary(cfg)},
                     indent=1))
