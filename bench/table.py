"""A small table: rows of cells, rendered as a Markdown table (for reports) or as aligned text
(for the console). Numbers are formatted by the caller; the table only lays them out."""

from __future__ import annotations

from collections.abc import Sequence


class Table:
    """``Table(["workers", "endpoint", "req/s"], align="rlr")``: one letter per column, ``l`` or
    ``r`` (default all ``l``). ``add`` takes one cell per column; None is an empty cell."""

    def __init__(self, headers: Sequence[str], align: str | None = None) -> None:
        if not headers:
            raise ValueError("a table needs at least one column")
        align = align if align is not None else "l" * len(headers)
        if len(align) != len(headers) or set(align) - {"l", "r"}:
            raise ValueError(f"align must be one of l/r per column ({len(headers)}), got {align!r}")
        self.headers = list(headers)
        self.align = align
        self.rows: list[list[str]] = []

    def add(self, *cells: object) -> Table:
        if len(cells) != len(self.headers):
            raise ValueError(f"{len(cells)} cells for {len(self.headers)} columns: {cells!r}")
        self.rows.append(["" if c is None else str(c) for c in cells])
        return self

    def __len__(self) -> int:
        return len(self.rows)

    def markdown(self) -> list[str]:
        """GitHub-flavoured Markdown lines; a ``|`` in a cell is escaped, line breaks become spaces."""

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

        rule = "|" + "|".join("---:" if a == "r" else "---" for a in self.align) + "|"
        return [line(self.headers), rule, *(line(row) for row in self.rows)]

    def text(self) -> list[str]:
        """Plain text with padded columns, for a terminal."""
        widths = [max(len(row[i]) for row in [self.headers, *self.rows]) for i in range(len(self.headers))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.rjust(w) if a == "r" else c.ljust(w)
                             for c, w, a in zip(cells, widths, self.align, strict=True)).rstrip()

        return [line(self.headers), "  ".join("-" * w for w in widths), *(line(row) for row in self.rows)]
