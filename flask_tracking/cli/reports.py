"""``flask tracking stats`` and ``timeline``: aligned tables from the rollups or the records."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import click

from ..display import escape
from ..documents import TrackingQuerySet
from ..reports import STATS_GROUPS, TIMELINE_BUCKETS
from ..rollups import ROLLUP_GROUPS, RollupQuerySet
from .selection import app_records, command, filter_options, filtered, select_rollups

_BAR_WIDTH = 40
_MAX_FILLED_BUCKETS = 1000
_STATS_SORTS = ("count", "errors", "error_rate", "mean", "p50", "p95", "p99", "max", "name")
_RECORDS_OPTION = click.option(
    "--records",
    is_flag=True,
    help="Report on the stored records (sampled, evicted ones gone) instead of the rollups "
    "(every request); needed for --path, --status, --user, --ip, --slow, --errors, --data.",
)
#: Filter options only the stored records can answer.
_RECORD_ONLY_FILTERS = ("path", "status", "user", "ip", "slow", "errors", "data")


@command("stats")
@filter_options
@_RECORDS_OPTION
@click.option(
    "--by",
    type=click.Choice(list(dict.fromkeys((*ROLLUP_GROUPS, *STATS_GROUPS)))),
    default="endpoint",
    show_default=True,
    help="Rollups group by endpoint, method or status_class; --records by endpoint, path, "
    "status_code or user_id.",
)
@click.option(
    "--sort",
    type=click.Choice(_STATS_SORTS),
    default="count",
    show_default=True,
    help="Column to sort on, largest first (name: alphabetical).",
)
@click.option("--limit", type=int, default=0, help="Show only the first N rows.")
def stats_command(by: str, sort: str, limit: int, records: bool, **options: Any) -> None:
    """A table per endpoint (or --by): requests, errors and execution-time percentiles (ms),
    from the rollups (every request; percentiles within 5 %) or, with --records, from the
    stored records."""
    groups = STATS_GROUPS if records else ROLLUP_GROUPS
    if by not in groups:
        source = "--records" if records else "the rollups (without --records)"
        raise click.ClickException(
            f"--by {by} is not available with {source}: {', '.join(groups)}."
        )
    rows = _reported(options, records).stats(group_by=by)
    if not rows:
        click.echo("No records match.", err=True)
        return
    if sort == "name":
        rows.sort(key=lambda row: str(row[by]))
    else:
        rows.sort(key=lambda row: (row[sort] is not None, row[sort] or 0), reverse=True)
    if limit > 0:
        rows = rows[:limit]
    header = [by, "count", "errors", "err%", "mean", "p50", "p95", "p99", "max", "in", "out"]
    table = [
        [
            "-" if row[by] is None else escape(row[by]),
            str(row["count"]),
            str(row["errors"]),
            f"{row['error_rate'] * 100:.1f}",
            *(_ms(row[key]) for key in ("mean", "p50", "p95", "p99", "max")),
            bytes_text(row["bytes_in"]),
            bytes_text(row["bytes_out"]),
        ]
        for row in rows
    ]
    styles = [("red" if row["errors"] else None) for row in rows]
    for line in _table(header, table, styles):
        click.echo(line)


@command("timeline")
@filter_options
@_RECORDS_OPTION
@click.option(
    "--bucket",
    type=click.Choice(list(TIMELINE_BUCKETS)),
    default="hour",
    show_default=True,
    help="Length of one row (UTC).",
)
def timeline_command(bucket: str, records: bool, **options: Any) -> None:
    """Requests, errors and p95 (ms) per minute, hour or day (UTC), with a bar of the count,
    from the rollups or, with --records, from the stored records."""
    rows = _filled(_reported(options, records).timeline(bucket=bucket), bucket)
    if not rows:
        click.echo("No records match.", err=True)
        return
    layout = {"minute": "%Y-%m-%d %H:%M", "hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}[bucket]
    most = max(row["count"] for row in rows) or 1
    header = ["start (UTC)", "count", "errors", "p95", ""]
    table = [
        [
            row["start"].strftime(layout),
            str(row["count"]),
            str(row["errors"]),
            _ms(row["p95"]),
            "#" * round(row["count"] / most * _BAR_WIDTH),
        ]
        for row in rows
    ]
    styles = [("red" if row["errors"] else None) for row in rows]
    for line in _table(header, table, styles):
        click.echo(line)


def _filled(rows: list[dict[str, Any]], bucket: str) -> list[dict[str, Any]]:
    """``rows`` with the empty buckets between them added (unless there would be too many)."""
    if len(rows) < 2:
        return rows
    step = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}[
        bucket
    ]
    if (rows[-1]["start"] - rows[0]["start"]) / step > _MAX_FILLED_BUCKETS:
        return rows
    by_start = {row["start"]: row for row in rows}
    empty = {"count": 0, "errors": 0, "p95": None}
    filled, start = [], rows[0]["start"]
    while start <= rows[-1]["start"]:
        filled.append(by_start.get(start) or {"start": start, **empty})
        start += step
    return filled


def _table(header: list[str], rows: list[list[str]], styles: list[str | None]) -> Iterator[str]:
    """Aligned columns: the first left-aligned, the others right-aligned (the last, a bar,
    left-aligned when its header is empty)."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def render(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        for index, cell in enumerate(cells[1:], 1):
            bar = index == len(cells) - 1 and not header[index]
            parts.append(cell.ljust(widths[index]) if bar else cell.rjust(widths[index]))
        return "  ".join(parts).rstrip()

    yield click.style(render(header), bold=True)
    for cells, colour in zip(rows, styles):
        yield click.style(render(cells), fg=colour)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def bytes_text(count: int) -> str:
    """``count`` bytes for a reader: ``512 B``, ``2.5 kB``, ``104.9 MB`` (powers of 1000)."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover (the loop always returns)


def _reported(options: dict[str, Any], records: bool) -> TrackingQuerySet | RollupQuerySet:
    """What ``stats`` and ``timeline`` report on: the rollups, or with ``--records`` the
    stored records (popping the filter options)."""
    if records:
        return filtered(app_records(), options)
    only_records = [
        f"--{name}" for name in _RECORD_ONLY_FILTERS if options.get(name) not in (None, False, ())
    ]
    if only_records:
        raise click.ClickException(
            f"{', '.join(only_records)} can only select stored records: add --records (the "
            "rollups count every request by endpoint and method only)."
        )
    try:
        return select_rollups(
            endpoint=options.get("endpoint"),
            method=options.get("method"),
            since=options.get("since"),
            until=options.get("until"),
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from None
