from collections.abc import Iterator

import pytest

from tests.cli_in_process import (
    in_process,  # noqa: F401  (`edge-agent ARGS` in this process)
    root_logger_as_found,
)
from tests.postgres_fixture import Postgres, pg_binary
from tests.receiver_fixture import receiver  # noqa: F401  (a real edge server on 127.0.0.1)
from tests.seaweed_fixture import SeaweedFS


@pytest.fixture(autouse=True)
def _root_logger_as_found() -> Iterator[None]:
    """A test that runs a command in this process (`main([...])`) gets the command's log handler, bound to
    that test's captured stderr: it goes with the test, or a later test's threads would log into a closed
    file ("Logging error ... I/O operation on closed file")."""
    with root_logger_as_found():
        yield


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL, started once per test session (tests take a database each)."""
    pytest.importorskip("psycopg", reason="psycopg is the receiver's optional PostgreSQL extra")
    if pg_binary("initdb") is None or pg_binary("pg_ctl") is None:
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl; apt-get install postgresql)")
    pg = Postgres()
    try:
        pg.start()
    except (RuntimeError, OSError) as exc:
        pg.stop()
        pytest.skip(f"PostgreSQL cannot run here: {exc}")
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real SeaweedFS shared by a test module (skipped with the reason where it cannot run)."""
    w = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        w.start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"SeaweedFS cannot run here: {exc}")
    yield w
    w.stop()
