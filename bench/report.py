"""The one table `python -m bench` prints, and docs/PERFORMANCE.md around it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    section: str
    measure: str
    value: str
    baseline: str = ""  # the same-run baseline or the raw numbers behind a ratio
    target: str = ""
    met: bool | None = None  # None: no target for this row

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: ""}[self.met]


HEADERS = ("Section", "Measure", "Value", "Baseline / detail", "Target", "Met")


def cells(row: Row) -> tuple[str, ...]:
    return (row.section, row.measure, row.value, row.baseline, row.target, row.verdict)


def text_table(rows: list[Row]) -> str:
    table = [HEADERS, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    lines = []
    for n, line in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(esc(c) for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines)
