"""The metrics database's maintenance commands: ``migrate`` and ``retention``."""

from __future__ import annotations

import argparse

from fraiseql_observability.metricsdb.migrate import migrate
from fraiseql_observability.metricsdb.retention import drop_expired_partitions

from ..common import settings_from


def cmd_migrate(args: argparse.Namespace) -> None:
    settings = settings_from(args, **{"database.url": args.database})
    applied = migrate(settings.database_url)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))


def cmd_retention(args: argparse.Namespace) -> None:
    settings = settings_from(args, **{"database.url": args.database})
    dropped = drop_expired_partitions(
        settings.database_url, settings.retention_days,
        minute_retention_days=min(settings.minute_retention_days, settings.retention_days),
    )
    print(f"dropped {len(dropped)} partition(s)" + (f": {', '.join(dropped)}" if dropped else ""))
