"""The [store] section: which database keeps the mail, and how it is reached (docs/deployment.md)."""
from __future__ import annotations

from enum import StrEnum


class StoreBackend(StrEnum):
    SQLITE = "sqlite"            # one file on this host: the default
    POSTGRESQL = "postgresql"    # one database for any number of replicas


def dsn_fields(dsn: str) -> dict[str, str]:
    """libpq's keywords of a DSN ("host=a,b dbname=x" or a postgresql:// URI); ValueError when unreadable."""
    # Imported here: a SQLite deployment never loads the PostgreSQL driver.
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict
    try:
        return {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    except ProgrammingError as exc:
        raise ValueError(" ".join(str(exc).split())) from None


def describe_dsn(dsn: str) -> str:
    """The database for messages and status: postgresql://user@host:port/dbname, never a password."""
    try:
        fields = dsn_fields(dsn)
    except ValueError:
        return "postgresql (an unreadable dsn)"
    host = fields.get("host") or fields.get("hostaddr") or "localhost"
    port = f":{fields['port']}" if fields.get("port") else ""
    user = f"{fields['user']}@" if fields.get("user") else ""
    return f"postgresql://{user}{host}{port}/{fields.get('dbname', '')}"
