"""``flask tracking list``, ``show`` and ``tail``: the records one line each, or one in full."""

from __future__ import annotations

from typing import Any

import click

from ..display import escape
from ..documents import Tracking
from .selection import app_records, command, filter_options, filtered, record_by_id


@command("list")
@filter_options
@click.option("--limit", type=int, default=20, show_default=True, help="At most this many; 0: all.")
@click.option(
    "--db",
    "with_db",
    is_flag=True,
    help="Add the database work of each request: commands, time in the database, and the "
    "most repeated query shape when one repeats.",
)
def list_command(limit: int, with_db: bool, **options: Any) -> None:
    """Recorded requests, newest first, one line each."""
    records = filtered(app_records(), options)
    if limit > 0:
        records = records.limit(limit)
    shown = 0
    for record in records.no_cache():
        click.echo(f"{_line(record)}  {_db_columns(record)}" if with_db else _line(record))
        shown += 1
    if not shown:
        click.echo("No records match.", err=True)


@command("show")
@click.argument("record_id")
def show_command(record_id: str) -> None:
    """Everything recorded about one request: request, response and context."""
    click.echo(record_by_id(app_records(), record_id).debug())


@command("tail")
@filter_options
@click.option(
    "-n", "--lines", type=int, default=10, show_default=True, help="Recent records shown first."
)
@click.option(
    "--interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between polls (or the longest wait of the tailable cursor).",
)
@click.option("--max-records", type=int, help="Stop after this many new records.")
@click.option("--timeout", type=float, help="Stop after this many seconds.")
def tail_command(
    lines: int, interval: float, max_records: int | None, timeout: float | None, **options: Any
) -> None:
    """Follow new records as they are stored, until Ctrl-C (or --max-records / --timeout).

    A capped collection is followed with a tailable cursor; the others (TRACKING_STORAGE "ttl"
    or "timeseries", mongomock) are polled every --interval seconds.
    """
    records = filtered(app_records(), options)
    try:
        followed = records.follow(interval=interval, timeout=timeout)
    except ValueError as error:  # 0 or less would poll the database in a busy loop
        raise click.ClickException(f"--interval: {error}") from None
    if lines > 0:
        for record in reversed(list(records.limit(lines))):
            click.echo(_line(record))
    try:
        for count, record in enumerate(followed, 1):
            click.echo(_line(record))
            if max_records is not None and count >= max_records:
                break
    except KeyboardInterrupt:
        pass
    finally:
        followed.close()


def _line(record: Tracking) -> str:
    """``<id> <record as one line>``, coloured by status (shown only on a terminal)."""
    status = record.status_code or 0
    colour = None
    if status >= 500 or record.exception:
        colour = "red"
    elif status >= 400:
        colour = "yellow"
    elif 300 <= status < 400:
        colour = "cyan"
    return f"{click.style(str(record.pk), dim=True)} {click.style(str(record), fg=colour)}"


def _db_columns(record: Tracking) -> str:
    """``db 12 cmd 3.4ms`` (and ``repeated 12x find items``), or ``db -`` without database
    work, for ``list --db``."""
    db = record.db
    if db is None:
        return "db -"
    took = f"{db.time_ms:.1f}ms" if db.time_ms is not None else "-"
    columns = f"db {db.count or 0} cmd {took}"
    if db.repeated:
        top = db.repeated[0]
        where = " ".join(str(part) for part in (top.get("command"), top.get("collection")) if part)
        columns += click.style(f" repeated {top.get('count')}x {escape(where)}", fg="yellow")
    return columns
