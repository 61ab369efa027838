"""``fedkd-check-data FILE... [OVERRIDES]``: check a client's own data file on its own machine.

The same check a SuperNode runs when the server's start-up query arrives
(``fedkd.data.local.load_local_data`` against the run's number of classes and
input shape, from the config the overrides compose), without starting anything:
one line per file, ``ok`` with its size and classes, or what is wrong; exit
status 1 if any file is bad.

    fedkd-check-data data/client0.npz
    fedkd-check-data data/site_a.csv --label-column y num_clients=3
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fedkd.errors import FedkdError
from simulations import cli


def check_files(
    paths: Sequence[str], overrides: Sequence[str] = (), label_column: str = "label"
) -> list[tuple[str, bool, str]]:
    """``(path, ok, line)`` per file: a summary for a good file, the error for a bad one.
    A bad config raises its one-line ConfigError."""
    from fedkd.client.runtime import data_key, federated_data
    from fedkd.config import compose
    from fedkd.data.local import load_local_data
    from fedkd.schema import check_early

    cfg = compose(list(overrides))
    check_early(cfg, overrides)
    fed = federated_data(data_key(cfg))
    shape = tuple(int(d) for d in fed.input_shape)
    results = []
    for path in paths:
        try:
            data = load_local_data(
                path, num_classes=fed.num_classes, input_shape=shape, label_column=label_column
            )
        except FedkdError as err:
            results.append((path, False, str(err)))
            continue
        present = len({int(v) for v in data.y})
        results.append(
            (
                path,
                True,
                f"{path}: ok, {len(data.y)} samples of shape {shape}, "
                f"{present} of the run's {fed.num_classes} classes",
            )
        )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.parser("fedkd-check-data", __doc__)
    parser.add_argument("items", nargs="+", metavar="FILE|OVERRIDE", help="files, then overrides")
    parser.add_argument(
        "--label-column", default="label", help="label column of a .csv/.parquet (node config)"
    )
    args = parser.parse_args(argv)
    overrides = [a for a in args.items if "=" in a]
    paths = [a for a in args.items if "=" not in a]
    if not paths:
        parser.error("give at least one data file or folder")
    try:
        results = check_files(paths, overrides, args.label_column)
    except FedkdError as err:
        cli.fail("fedkd-check-data", err)
    for _, ok, line in results:
        print(line if ok else f"fedkd-check-data: {line}", file=sys.stdout if ok else sys.stderr)
    sys.exit(0 if all(ok for _, ok, _ in results) else 1)


if __name__ == "__main__":
    main()
