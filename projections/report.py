"""`zapstream report`: key analytics, read from the published snapshot of the DuckDB file.

It never opens the live file (the analytics follower holds it); it reads what the follower
published last, at most a few seconds behind (analytics.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from projections.analytics import open_snapshot


class FailureCount(msgspec.Struct, frozen=True, kw_only=True):
    source: str  # send (reply.failed) or delivery (a failed status)
    code: int | None  # WhatsApp's error code; None when Meta gave none
    failures: int


class Report(msgspec.Struct, frozen=True, kw_only=True):
    as_of: str | None  # when the newest event in the snapshot was appended (UTC, ISO 8601)
    messages_in: int
    messages_out: int
    sessions: int
    turns: int
    replies_sent: int
    response_median_s: float | None  # a turn's first message to its reply sent
    response_p95_s: float | None
    handoff_sessions: int
    handoff_rate: float | None  # sessions with a handoff request / sessions
    superseded_replies: int
    superseded_tokens: int
    failures: list[FailureCount]


def report(path: str | Path) -> Report:
    """The report of the analytics file at `path`, from its snapshot; raises SnapshotMissing
    when none is published yet."""
    con = open_snapshot(path)
    try:
        as_of, turns, sent, median, p95 = _one(
            con.execute(
                "SELECT"
                " (SELECT strftime(epoch_ms(max(at_ms)), '%Y-%m-%dT%H:%M:%S.%gZ') FROM events),"
                " count(*), count(replied_at),"
                " quantile_cont(response_s, 0.5), quantile_cont(response_s, 0.95)"
                " FROM turns"
            ).fetchone()
        )
        messages_in, messages_out = _one(
            con.execute(
                "SELECT count(*) FILTER (WHERE direction = 'in'),"
                " count(*) FILTER (WHERE direction = 'out') FROM messages"
            ).fetchone()
        )
        sessions, handed_off, rate = _one(
            con.execute("SELECT sessions, handed_off, rate FROM handoff_rate").fetchone()
        )
        superseded, tokens = _one(
            con.execute(
                "SELECT count(*), coalesce(sum(tokens), 0) FROM superseded_replies"
            ).fetchone()
        )
        failures = [
            FailureCount(source=source, code=code, failures=count)
            for source, code, count in con.execute(
                "SELECT source, code, failures FROM send_failures"
                " ORDER BY failures DESC, source, code NULLS LAST"
            ).fetchall()
        ]
    finally:
        con.close()
    return Report(
        as_of=as_of,
        messages_in=messages_in,
        messages_out=messages_out,
        sessions=sessions,
        turns=turns,
        replies_sent=sent,
        response_median_s=median,
        response_p95_s=p95,
        handoff_sessions=handed_off,
        handoff_rate=rate,
        superseded_replies=superseded,
        superseded_tokens=int(tokens),
        failures=failures,
    )


def _one(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    assert row is not None  # an aggregate always gives one row
    return row


def render(report: Report) -> str:
    """The report as a plain two-column table."""
    rows = [
        ("as of", report.as_of or "no events yet"),
        ("messages in", f"{report.messages_in:,}"),
        ("messages out", f"{report.messages_out:,}"),
        ("sessions", f"{report.sessions:,}"),
        ("turns", f"{report.turns:,}"),
        ("replies sent", f"{report.replies_sent:,}"),
        ("response time median", _seconds(report.response_median_s)),
        ("response time p95", _seconds(report.response_p95_s)),
        ("handoff rate", _handoffs(report)),
        ("superseded replies", f"{report.superseded_replies:,}"),
        ("superseded tokens", f"{report.superseded_tokens:,}"),
    ]
    if not report.failures:
        rows.append(("failures", "none"))
    for failure in report.failures:
        code = "no code" if failure.code is None else str(failure.code)
        rows.append((f"{failure.source} failures, code {code}", f"{failure.failures:,}"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def to_json(report: Report) -> bytes:
    return msgspec.json.encode(report)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} s"


def _handoffs(report: Report) -> str:
    if report.handoff_rate is None:
        return "-"
    return f"{report.handoff_rate:.1%} ({report.handoff_sessions:,} of {report.sessions:,})"
