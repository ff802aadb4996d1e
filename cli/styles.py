"""Reading the Fashion Product Images `styles.csv`, whose names may hold unquoted commas."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.errors import LookalikeError

COLUMNS = (
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
)


@dataclass(frozen=True)
class StyleRow:
    line: int
    product_id: str
    metadata: dict[str, str]


class StylesError(LookalikeError, ValueError):
    """styles.csv is not in the expected layout."""

    code = "invalid_styles"
    http_status = 400


def check_header(path: Path) -> None:
    """Raise StylesError unless the file starts with the expected header."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        _check(path, next(csv.reader(handle), None))


def _check(path: Path, header: list[str] | None) -> None:
    if header is None or [name.strip() for name in header[: len(COLUMNS)]] != list(COLUMNS):
        raise StylesError(f"{path}: the header must start with {','.join(COLUMNS)}")


def read_styles(path: Path) -> Iterator[StyleRow]:
    """Every row, lazily; extra commas belong to the last column (productDisplayName)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle)
        _check(path, next(rows, None))
        last = len(COLUMNS) - 1
        for fields in rows:
            if not fields or fields == [""]:
                continue
            if len(fields) > len(COLUMNS):
                fields = [*fields[:last], ",".join(fields[last:])]
            fields += [""] * (len(COLUMNS) - len(fields))
            values = [value.strip() for value in fields]
            product_id = values[0]
            metadata = dict(zip(COLUMNS[1:], values[1:], strict=True))
            yield StyleRow(rows.line_num, product_id, metadata)


def count_rows(path: Path) -> int:
    """Data rows in the file (for a progress bar's total), without parsing them."""
    with path.open("rb") as handle:
        return max(sum(1 for line in handle if line.strip()) - 1, 0)
