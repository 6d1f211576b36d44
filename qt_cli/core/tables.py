"""Tables that fit the terminal: one line per row, the least important columns dropped first.

Every table qt prints (`qt query`, `qt cleanup`, `qt monitor`) goes through `fit_table`: a cell
never wraps over several lines; a column that still does not fit ends in an ellipsis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

from rich import box
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table


@dataclass(frozen=True)
class Column:
    """A table column: its header, how long a narrow terminal keeps it, its alignment."""

    header: RenderableType
    priority: int  # lower is kept longer on a narrow terminal; 0 is never dropped
    justify: Any = "right"  # rich's JustifyMethod


def fit_table(
    columns: Sequence[Column], rows: Sequence[Sequence[Any]], width: int, **table_args: Any
) -> Table:
    """The widest table that fits `width`: drop the least important columns first, never wrap.

    Among columns of equal priority the rightmost goes first. At least two columns stay.
    """
    keep = list(range(len(columns)))
    # _NullFile has the write/flush Console uses: an IO[str] for what rich needs
    measure_console = Console(width=10_000, color_system=None, file=cast("IO[str]", _NullFile()))
    defaults: dict[str, Any] = {"box": box.SIMPLE_HEAD, "pad_edge": False, "show_edge": False}
    table_args = defaults | table_args
    while True:
        table = Table(expand=False, **table_args)
        for i in keep:
            column = columns[i]
            table.add_column(
                column.header, justify=column.justify, no_wrap=True, overflow="ellipsis"
            )
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        unbounded = measure_console.options.update_width(10_000)
        needed = Measurement.get(measure_console, unbounded, table).maximum
        if needed <= width or len(keep) <= 2:
            return table
        worst = max(keep, key=lambda i: (columns[i].priority, i))
        if columns[worst].priority == 0:
            return table
        keep.remove(worst)


class _NullFile:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
