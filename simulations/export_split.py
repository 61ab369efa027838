"""``fedkd-export-split OUT [OVERRIDES]``: write a fedkd split as per-client files.

Composes the config like ``fedkd-sim`` (same overrides, same seed), builds the
federated split and writes every client's local train and test data as
``OUT/train/<id>.npz`` and ``OUT/test/<id>.npz`` (arrays ``x``, ``y``: the
PFLlib / HtFLlib layout), so other tools can run the identical split and
``fedkd-sim dataset=partitioned dataset.path=OUT`` reads it back.

    fedkd-export-split data/split num_clients=5 partition.alpha=0.1 seed=1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedkd.errors import FedkdError


def export(out: str | Path, overrides: Sequence[str] = ()) -> list[Path]:
    from fedkd.config import compose
    from fedkd.data import build_federated_data
    from fedkd.data.partitioned import write_split
    from fedkd.schema import check_early

    cfg = compose(list(overrides))
    check_early(cfg, overrides)
    fed = build_federated_data(cfg)
    return write_split(out, fed.clients)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fedkd-export-split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="folder for train/<id>.npz and test/<id>.npz")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for fedkd-sim")
    args = parser.parse_args(argv)
    try:
        written = export(args.out, args.overrides)
    except FedkdError as err:
        print(f"fedkd-export-split: error: {err}", file=sys.stderr)
        sys.exit(1)
    clients = len(written) // 2
    print(f"wrote {clients} clients' train/ and test/ files to {args.out}")


if __name__ == "__main__":
    main()
