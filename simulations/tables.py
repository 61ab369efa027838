"""Result tables of many runs: mean ± std cells, Markdown tables and their CSVs.

One module for the tables ``fedkd-compare`` writes (``docs/comparison-*.md``,
``simulations/compare.py``) and the sweep summary a Hydra multirun writes at its
root (``summary.md``, ``simulations/sweep.py``): both aggregate each setting's
runs into a mean and a sample standard deviation, print them with one decimal
and write the unrounded values, four decimals, to a CSV beside the table.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(pair: tuple[float, float], single: bool, missing: str = "n/a") -> str:
    """``61.2 ± 0.2``; the mean alone when ``single``; ``missing`` when there is no value."""
    mean, std = pair
    if math.isnan(mean):
        return missing
    return f"{mean:.1f}" if single else f"{mean:.1f} ± {std:.1f}"


def markdown(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: the header, its separator, one line per row."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def mean_std_columns(names: Iterable[str]) -> list[str]:
    """CSV column names: ``<name>_mean``, ``<name>_std`` for every name."""
    return [f"{name}_{stat}" for name in names for stat in ("mean", "std")]


def mean_std_values(pairs: Iterable[tuple[float, float]]) -> list[str]:
    """CSV cells of (mean, std) pairs, four decimals (``nan`` where there is no value)."""
    return [f"{value:.4f}" for pair in pairs for value in pair]


def write_csv(path: Path, head: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV file with the header ``head`` and one line per row."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        writer.writerows(rows)
