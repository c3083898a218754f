"""The index of LDOs kept beside the objects, so `GET /ingest/list` reads a few index pages instead
of listing the store: SQLite in the data dir for one receiver, PostgreSQL for several receivers on
one store. The objects stay the truth; the index can always be rebuilt from them (storage.py).

Why listing stays fast at a million rows with an exact `total` and `skip`: beside the rows, the
index keeps per-day and per-hour counts (all LDOs, per site, per site and device), updated in the
same transaction as each row. The total is a sum over a few hundred day counts a year, and a
`skip` deep in the list is located by walking the day counts, then that day's 24 hour counts, so
the database only steps over the rows of one hour, never over the hundreds of thousands before it
(SQL OFFSET over a million rows alone takes ~50 ms). Newest first: `ORDER BY created_at DESC, id
DESC` (docs/receiver.md says why).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..delivery.contract import rfc3339
from .objects import StorageUnavailable

log = logging.getLogger("edge_agent.receiver")

HOUR_US = 3_600_000_000
COUNT_TABLES = [f"ldo_n_{g}{d}" for g in ("hour", "day") for d in ("", "_site", "_device")]
COLUMNS = ("id", "base", "key_hash", "site", "device_id", "created_us", "size_bytes", "has_video", "status")

_DDL = [
    "CREATE TABLE IF NOT EXISTS ldo_index (id TEXT PRIMARY KEY, base TEXT NOT NULL, key_hash TEXT,"
    " site TEXT NOT NULL, device_id TEXT NOT NULL, created_us BIGINT NOT NULL, size_bytes BIGINT NOT NULL,"
    " has_video BIGINT NOT NULL, status TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ldo_index_created ON ldo_index (created_us DESC, id DESC)",
    "CREATE INDEX IF NOT EXISTS ldo_index_site ON ldo_index (site, created_us DESC, id DESC)",
    "CREATE INDEX IF NOT EXISTS ldo_index_device ON ldo_index (device_id, created_us DESC, id DESC)",
    "CREATE INDEX IF NOT EXISTS ldo_index_key ON ldo_index (key_hash)",
    *[stmt for g in ("hour", "day") for stmt in (
        f"CREATE TABLE IF NOT EXISTS ldo_n_{g} (b BIGINT PRIMARY KEY, n BIGINT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS ldo_n_{g}_site (site TEXT NOT NULL, b BIGINT NOT NULL, n BIGINT NOT NULL,"
        " PRIMARY KEY (site, b))",
        f"CREATE TABLE IF NOT EXISTS ldo_n_{g}_device (site TEXT NOT NULL, device_id TEXT NOT NULL, b BIGINT NOT NULL,"
        " n BIGINT NOT NULL, PRIMARY KEY (site, device_id, b))",
        f"CREATE INDEX IF NOT EXISTS ldo_n_{g}_device_b ON ldo_n_{g}_device (device_id, b)")],
    # an object write in progress: if the receiver dies before the row is written, start-up repairs it
    "CREATE TABLE IF NOT EXISTS ldo_pending (base TEXT PRIMARY KEY, since DOUBLE PRECISION NOT NULL)",
]

Query = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


def keyset_walk(query: Query, select: str, order: str, conds: list[str], args: list[Any], page: int,
                key: Callable[[Any], Any]) -> Iterator[tuple[Any, ...]]:
    """Every row of `select` ("SELECT id, ..., <order> FROM table": the id first, the order column last)
    matching `conds` (their values in `args`), by (order, id), `page` rows a query: keyset on the last
    row's (key(order), id), so each page is an index range scan, never an OFFSET. Stops on a short page."""
    after: tuple[Any, str] | None = None
    while True:
        where = conds + ([f"({order} > ? OR ({order} = ? AND id > ?))"] if after else [])
        more = (after[0], after[0], after[1]) if after else ()
        rows = query(select + (f" WHERE {' AND '.join(where)}" if where else "") + f" ORDER BY {order}, id LIMIT ?",
                     (*args, *more, page))
        yield from rows
        if len(rows) < page:
            return
        after = (key(rows[-1][-1]), str(rows[-1][0]))


class IndexUnavailable(StorageUnavailable):
    """The index database cannot be reached; 503, the client retries."""


def listing_row(r: tuple[Any, ...]) -> dict[str, Any]:
    """(id, status, has_video, created_us, size_bytes) as `GET /ingest/list` shows it."""
    return {"id": r[0], "status": r[1], "filename": f"{r[0]}.mp4" if r[2] else None,
            "created_at": rfc3339(r[3] / 1e6), "size_bytes": int(r[4])}


class LdoIndex:
    """The SQL both databases share; subclasses provide transactions and the bulk insert."""

    description = "index"

    # --- transactions, per database -------------------------------------------------------------

    @contextmanager
    def _tx(self, read_only: bool = False) -> Iterator[Query]:
        raise NotImplementedError
        yield  # pragma: no cover

    def _insert_rows(self, q: Query, rows: list[tuple[Any, ...]]) -> list[tuple[str, str, int]]:
        """Insert rows not yet there; return (site, device_id, hour) of each row actually inserted."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # --- writes ---------------------------------------------------------------------------------

    def add(self, rows: Iterable[dict[str, Any]], done_base: str | None = None) -> int:
        """Add rows (those already present are left alone) and their hour counts in one transaction;
        also clear the pending mark of `done_base`. Returns how many were new."""
        tuples = [tuple(int(bool(r[c])) if c == "has_video" else r[c] for c in COLUMNS) for r in rows]
        with self._tx() as q:
            inserted = self._insert_rows(q, tuples) if tuples else []
            self._count(q, inserted)
            if done_base is not None:
                q("DELETE FROM ldo_pending WHERE base = ?", (done_base,))
        return len(inserted)

    @staticmethod
    def _count(q: Query, inserted: list[tuple[str, str, int]]) -> None:
        for g, div in (("hour", 1), ("day", 24)):
            for table, keys, counts in (
                (f"ldo_n_{g}", ("b",), Counter((h // div,) for _, _, h in inserted)),
                (f"ldo_n_{g}_site", ("site", "b"), Counter((s, h // div) for s, _, h in inserted)),
                (f"ldo_n_{g}_device", ("site", "device_id", "b"), Counter((s, d, h // div) for s, d, h in inserted)),
            ):
                cols = ", ".join(keys)
                marks = ", ".join("?" for _ in keys)
                for key, n in sorted(counts.items()):
                    q(f"INSERT INTO {table} ({cols}, n) VALUES ({marks}, ?) ON CONFLICT ({cols})"
                      f" DO UPDATE SET n = {table}.n + excluded.n", (*key, n))

    def clear(self) -> None:
        """Forget every row and count (before a rebuild from the store)."""
        with self._tx() as q:
            for table in ("ldo_index", *COUNT_TABLES):
                q(f"DELETE FROM {table}", ())

    def pending_add(self, base: str) -> None:
        with self._tx() as q:
            q("INSERT INTO ldo_pending (base, since) VALUES (?, ?) ON CONFLICT (base) DO UPDATE SET since ="
              " excluded.since", (base, time.time()))

    def pending(self) -> list[tuple[str, float]]:
        with self._tx(read_only=True) as q:
            return [(r[0], float(r[1])) for r in q("SELECT base, since FROM ldo_pending ORDER BY base", ())]

    def pending_drop(self, base: str) -> None:
        with self._tx() as q:
            q("DELETE FROM ldo_pending WHERE base = ?", (base,))

    # --- reads ----------------------------------------------------------------------------------

    def is_empty(self) -> bool:
        with self._tx(read_only=True) as q:
            return not q("SELECT 1 FROM ldo_index LIMIT 1", ())

    def reply_for_key(self, key_hash: str) -> dict[str, Any] | None:
        """The reply an earlier request with this key got, from its row."""
        with self._tx(read_only=True) as q:
            rows = q("SELECT id, status, size_bytes FROM ldo_index WHERE key_hash = ? ORDER BY created_us LIMIT 1",
                     (key_hash,))
        return {"id": rows[0][0], "status": rows[0][1], "size_bytes": int(rows[0][2])} if rows else None

    def has(self, ldo_id: str) -> bool:
        with self._tx(read_only=True) as q:
            return bool(q("SELECT 1 FROM ldo_index WHERE id = ?", (ldo_id,)))

    def list(self, skip: int, limit: int, device_id: str | None = None, site: str | None = None,
             since_us: int | None = None, until_us: int | None = None) -> tuple[int, list[dict[str, Any]]]:
        """One page, newest first, and the exact number of LDOs matching the filters (`since`
        inclusive, `until` exclusive, on the ingest time).

        The matching rows fall into spans, newest first: the hour `until` cuts (its rows counted
        one by one), the whole hours up to a day boundary, whole days, whole hours after the last
        whole day, and the hour `since` cuts. Whole spans are counted from the hour and day
        counts; the span holding row `skip` is narrowed to its hour (a day to its 24 hours), and
        only that hour's rows are stepped over."""
        dims, dargs = [], []
        if site is not None:
            dims.append("site = ?")
            dargs.append(site)
        if device_id is not None:
            dims.append("device_id = ?")
            dargs.append(device_id)

        def source(g: str) -> str:
            if device_id is not None:  # a device seen at several sites has one count per site
                return f"SELECT b, SUM(n) AS n FROM ldo_n_{g}_device WHERE {' AND '.join(dims)} GROUP BY b"
            if site is not None:
                return f"SELECT b, n FROM ldo_n_{g}_site WHERE site = ?"
            return f"SELECT b, n FROM ldo_n_{g}"

        lo = since_us // HOUR_US if since_us is not None else None
        hi = (until_us - 1) // HOUR_US if until_us is not None else None
        if lo is not None and hi is not None and hi < lo:
            return 0, []
        with self._tx(read_only=True) as q:

            def counts(g: str, first: int | None, last: int | None) -> list[tuple[str, int, int]]:
                """(g, bucket, n) for buckets first..last (None: unbounded), newest first."""
                conds, args = [], list(dargs)
                if first is not None:
                    conds.append("b >= ?")
                    args.append(first)
                if last is not None:
                    conds.append("b <= ?")
                    args.append(last)
                if first is not None and last is not None and last < first:
                    return []
                where = (" WHERE " + " AND ".join(conds)) if conds else ""
                return [(g, int(b), int(n)) for b, n in q(f"SELECT b, n FROM ({source(g)}) s{where} ORDER BY b DESC",
                                                          tuple(args))]

            def exact(hour: int) -> list[tuple[str, int, int]]:
                start = max(hour * HOUR_US, since_us if since_us is not None else hour * HOUR_US)
                end = min((hour + 1) * HOUR_US, until_us if until_us is not None else (hour + 1) * HOUR_US)
                conds = " AND ".join([*dims, "created_us >= ?", "created_us < ?"])
                n = q(f"SELECT COUNT(*) FROM ldo_index WHERE {conds}", (*dargs, start, end))[0][0]
                return [("hour", hour, int(n))]

            spans: list[tuple[str, int, int]] = []
            if hi is not None:
                spans += exact(hi)
            tail = exact(lo) if lo is not None and lo != hi else []
            # whole hours strictly inside (lo, hi)
            w_lo = lo + 1 if lo is not None else None
            w_hi = hi - 1 if hi is not None else None
            if w_lo is None or w_hi is None or w_lo <= w_hi:
                d_first = None if w_lo is None else (w_lo + 23) // 24  # first day wholly inside
                d_last = None if w_hi is None else (w_hi + 1) // 24 - 1  # last day wholly inside
                if d_first is not None and d_last is not None and d_last < d_first:
                    spans += counts("hour", w_lo, w_hi)
                else:
                    if w_hi is not None:
                        spans += counts("hour", (d_last + 1) * 24, w_hi)  # type: ignore[operator]
                    spans += counts("day", d_first, d_last)
                    if w_lo is not None:
                        spans += counts("hour", w_lo, d_first * 24 - 1)  # type: ignore[operator]
            spans += tail
            total = sum(n for _, _, n in spans)
            if skip >= total:
                return total, []
            before, found = 0, spans[-1]
            for span in spans:
                if skip < before + span[2]:
                    found = span
                    break
                before += span[2]
            hour = found[1]
            if found[0] == "day":  # narrow the day to its hour
                for _, h, n in counts("hour", found[1] * 24, found[1] * 24 + 23):
                    if skip < before + n:
                        hour = h
                        break
                    before += n
            end = (hour + 1) * HOUR_US
            conds, args = [*dims, "created_us < ?"], [*dargs, end if until_us is None else min(until_us, end)]
            if since_us is not None:
                conds.append("created_us >= ?")
                args.append(since_us)
            rows = q(f"SELECT id, status, has_video, created_us, size_bytes FROM ldo_index WHERE {' AND '.join(conds)}"
                     " ORDER BY created_us DESC, id DESC LIMIT ? OFFSET ?", (*args, limit, skip - before))
        return total, [listing_row(r) for r in rows]

    def walk(self, device_id: str | None = None, since_us: int | None = None,
             page: int = 1000) -> Iterator[tuple[str, str, bool]]:
        """(id, base, has_video) of every LDO matching the filters, oldest first, a page per query
        (keyset on the ingest time and id, so each page is an index range scan, never an OFFSET)."""
        conds, args = [], []
        if device_id is not None:
            conds.append("device_id = ?")
            args.append(device_id)
        if since_us is not None:
            conds.append("created_us >= ?")
            args.append(since_us)

        def query(sql: str, values: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            with self._tx(read_only=True) as q:  # a transaction a page: none held while the caller works
                return q(sql, values)

        for r in keyset_walk(query, "SELECT id, base, has_video, created_us FROM ldo_index", "created_us", conds, args,
                             page, int):
            yield str(r[0]), str(r[1]), bool(r[2])


class SqliteLdoIndex(LdoIndex):
    """The embedded default: one file in the data dir, one connection behind a lock."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.description = f"sqlite:{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for stmt in _DDL:
            self._db.execute(stmt)
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self, read_only: bool = False) -> Iterator[Query]:
        with self._lock:
            self._db.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")
            try:
                yield lambda sql, args: self._db.execute(sql, args).fetchall()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _insert_rows(self, q: Query, rows: list[tuple[Any, ...]]) -> list[tuple[str, str, int]]:
        sql = (f"INSERT INTO ldo_index ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
               " ON CONFLICT (id) DO NOTHING RETURNING site, device_id, created_us / 3600000000")
        out: list[tuple[str, str, int]] = []
        for row in rows:
            out += [(s, d, int(h)) for s, d, h in q(sql, row)]
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresLdoIndex(LdoIndex):
    """Shared by several receivers: a small connection pool, rows and counts in one transaction,
    lists in one REPEATABLE READ snapshot so the total and the page agree."""

    def __init__(self, url: str, pool_size: int = 8):
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise ValueError("--index postgresql:// needs psycopg: pip install 'cid-edge-agent[postgres]'") from exc
        self._errors: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
        self.description = "postgresql://" + url.split("@")[-1].split("://")[-1]  # no password in logs
        try:
            with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
                conn.execute("SELECT pg_advisory_lock(7353201)")  # one schema creation at a time
                for stmt in _DDL:
                    conn.execute(stmt)
                conn.execute("SELECT pg_advisory_unlock(7353201)")
        except psycopg.Error as exc:
            raise ValueError(f"--index {self.description}: {str(exc).strip().splitlines()[0]}") from exc
        self.pool = ConnectionPool(url, min_size=1, max_size=pool_size, kwargs={"autocommit": True},
                                   timeout=15, open=True)

    @contextmanager
    def _tx(self, read_only: bool = False) -> Iterator[Query]:
        try:
            with self.pool.connection() as conn, conn.transaction():
                if read_only:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

                def q(sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
                    cur = conn.execute(sql.replace("?", "%s"), args)
                    return cur.fetchall() if cur.description else []

                q.conn = conn  # type: ignore[attr-defined]  # for COPY in _insert_rows
                yield q
        except self._errors as exc:
            raise IndexUnavailable(f"index database: {str(exc).strip().splitlines()[0]}") from exc
        except Exception as exc:
            if type(exc).__name__ == "PoolTimeout":
                raise IndexUnavailable(f"index database: {exc}") from exc
            raise

    def _insert_rows(self, q: Query, rows: list[tuple[Any, ...]]) -> list[tuple[str, str, int]]:
        if len(rows) == 1:
            sql = (f"INSERT INTO ldo_index ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
                   " ON CONFLICT (id) DO NOTHING RETURNING site, device_id, created_us / 3600000000")
            return [(s, d, int(h)) for s, d, h in q(sql, rows[0])]
        # many rows (reindex, bulk load): COPY into a scratch table, then one INSERT ... SELECT
        conn = q.conn  # type: ignore[attr-defined]
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS ldo_load (LIKE ldo_index) ON COMMIT DELETE ROWS")
        with conn.cursor().copy(f"COPY ldo_load ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur = conn.execute("INSERT INTO ldo_index SELECT DISTINCT ON (id) * FROM ldo_load ORDER BY id"
                           " ON CONFLICT (id) DO NOTHING RETURNING site, device_id, created_us / 3600000000")
        return [(s, d, int(h)) for s, d, h in cur.fetchall()]

    def close(self) -> None:
        self.pool.close()


def open_index(spec: str | None, data_dir: Path) -> LdoIndex:
    """`postgresql://...` (shared), `sqlite:PATH`, or nothing: `<data dir>/ldo-index.sqlite3`."""
    if not spec:
        return SqliteLdoIndex(Path(data_dir) / "ldo-index.sqlite3")
    if spec.startswith(("postgresql://", "postgres://")):
        return PostgresLdoIndex(spec)
    if spec.startswith("sqlite:") and spec[7:]:
        return SqliteLdoIndex(Path(spec[7:]))
    raise ValueError(f"--index {spec!r}: expected postgresql://USER@HOST/DB or sqlite:PATH")
