"""``postgresql://...``: rows in a PostgreSQL table, one per feedback id and revision.

The table (``feedback`` unless the URL says ``?table=NAME`` or ``?table=SCHEMA.NAME``) is
created when absent::

    CREATE TABLE feedback (
        id           uuid             NOT NULL,  -- feedback id
        revision     integer          NOT NULL,  -- 1, 2, ... under 'update' tokens; else 1
        token_id     uuid             NOT NULL,
        run_id       uuid             NOT NULL,
        feedback_key text             NOT NULL,
        score        double precision,
        value        jsonb,                      -- a string, number, boolean or object
        comment      text,
        correction   jsonb,                      -- a string or an object
        metadata     jsonb,                      -- an object
        created_at   timestamptz      NOT NULL,  -- when the submission was accepted
        stream       text             NOT NULL,  -- where it was read: the Redis stream
        stream_id    text             NOT NULL,  --   and the entry id in it
        delivered_at timestamptz      NOT NULL DEFAULT now(),
        PRIMARY KEY (id, revision)
    );
    CREATE INDEX feedback_run_id ON feedback (run_id);

A batch is one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT (id, revision) DO NOTHING``
(one statement, one round trip, its own transaction): an entry delivered again finds its row and
adds nothing. Connection trouble (the server down or restarting) is ``TargetUnavailable``;
values PostgreSQL refuses (a NUL character in a text, say) are ``Rejected`` and end, alone,
in the dead-letter stream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from app.config import ConfigError
from app.delivery.target import Rejected, TargetUnavailable
from app.store.entry import FeedbackEntry

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    id           uuid             NOT NULL,
    revision     integer          NOT NULL,
    token_id     uuid             NOT NULL,
    run_id       uuid             NOT NULL,
    feedback_key text             NOT NULL,
    score        double precision,
    value        jsonb,
    comment      text,
    correction   jsonb,
    metadata     jsonb,
    created_at   timestamptz      NOT NULL,
    stream       text             NOT NULL,
    stream_id    text             NOT NULL,
    delivered_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (id, revision)
)"""
INDEX = "CREATE INDEX IF NOT EXISTS {index} ON {table} (run_id)"

INSERT = """
INSERT INTO {table} (id, revision, token_id, run_id, feedback_key, score, value, comment, correction,
                     metadata, created_at, stream, stream_id)
SELECT * FROM unnest(%s::uuid[], %s::int[], %s::uuid[], %s::uuid[], %s::text[], %s::float8[], %s::jsonb[],
                     %s::text[], %s::jsonb[], %s::jsonb[], %s::timestamptz[], %s::text[], %s::text[])
ON CONFLICT (id, revision) DO NOTHING
"""


def split_url(url: str) -> tuple[str, tuple[str, ...]]:
    """The libpq URL without our own ``table`` parameter, and the table's name parts."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    table = [value for name, value in query if name == "table"]
    rest = [(name, value) for name, value in query if name != "table"]
    names = tuple(table[-1].split(".")) if table else ("feedback",)
    if not 1 <= len(names) <= 2 or not all(_IDENTIFIER.fullmatch(n) for n in names):
        raise ConfigError(f"table={table[-1]!r}: expected NAME or SCHEMA.NAME (letters, digits, underscores)")
    return urlunsplit(parts._replace(query=urlencode(rest))), names


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def columns(batch: Sequence[FeedbackEntry]) -> list[list[Any]]:
    """The batch as one array per column, in INSERT's order."""
    return [
        [e.id for e in batch],
        [e.revision for e in batch],
        [e.token_id for e in batch],
        [e.run_id for e in batch],
        [e.feedback_key for e in batch],
        [None if e.score is None else float(e.score) for e in batch],
        [_json(e.value) for e in batch],
        [e.comment for e in batch],
        [_json(e.correction) for e in batch],
        [_json(e.metadata) for e in batch],
        [e.created_at for e in batch],
        [e.stream for e in batch],
        [e.stream_id for e in batch],
    ]


class PostgresTarget:
    def __init__(self, url: str, connect_timeout: int = 10) -> None:
        self.conninfo, names = split_url(url)
        self.connect_timeout = connect_timeout
        self.table = sql.Identifier(*names)
        self.index = sql.Identifier(f"{names[-1]}_run_id")  # an index lives in its table's schema
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, connect_timeout=self.connect_timeout
            )
            for statement in (TABLE, INDEX):
                try:
                    await conn.execute(sql.SQL(statement).format(table=self.table, index=self.index))
                except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject):
                    pass  # IF NOT EXISTS races with another deliverer creating it at the same moment
            self._conn = conn
        return self._conn

    async def _drop(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    async def deliver(self, batch: Sequence[FeedbackEntry]) -> None:
        try:
            conn = await self._connection()
            await conn.execute(sql.SQL(INSERT).format(table=self.table), columns(batch))
        except (psycopg.OperationalError, psycopg.InterfaceError) as err:
            await self._drop()
            raise TargetUnavailable(f"PostgreSQL: {type(err).__name__}: {err}") from err
        except psycopg.errors.UndefinedTable as err:  # dropped under us: make it again, then retry
            await self._drop()
            raise TargetUnavailable(f"PostgreSQL: {err}") from err
        except (psycopg.DataError, psycopg.IntegrityError) as err:
            raise Rejected(f"PostgreSQL refused: {type(err).__name__}: {err}") from err

    async def aclose(self) -> None:
        await self._drop()
