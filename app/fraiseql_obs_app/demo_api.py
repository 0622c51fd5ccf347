"""A real FraiseQL 0.5.x GraphQL API over the demo application database, recorded.

    FRAISEQL_DEMO_API_DATABASE_URL=postgresql://... FRAISEQL_DEMO_API_CONFIG=fraiseql.toml \\
        python -m uvicorn fraiseql_obs_app.demo_api:create_app --factory --port 8000

``FRAISEQL_DEMO_API_CONFIG`` is the observability configuration (``[observability]``: Kafka,
sampling) of the recorder; ``FRAISEQL_DEMO_API_DATABASE_URL`` the demo application database
(:mod:`fraiseql_obs_producers.appdb`). The API is built by
:func:`~fraiseql_obs_producers.fraiseql_app.create_recorded_app` and served by uvicorn (the
factory runs in the serving process, after any fork, as the recorder requires); the demo's phase 2
and ``tests/test_fraiseql_app.py`` drive it over HTTP. Needs the ``[fraiseql]`` extra.

Queries (FraiseQL writes the filter values into the SQL text; ``order`` binds its id):

* ``orders(status, limit)`` -- ``WHERE (data ->> 'status') = '<status>'``
* ``ordersByCustomerEmail(email, limit)`` -- the demo's planted slow filter
* ``order(id)`` -- a primary-key lookup
"""

# No `from __future__ import annotations`: FraiseQL reads these annotations at runtime.

import os
from pathlib import Path
from typing import Any, Final

import fraiseql
from fraiseql.fastapi import FraiseQLConfig

from fraiseql_obs_producers.fraiseql_app import create_recorded_app
from fraiseql_obs_producers.recorder import Recorder
from fraiseql_observability.config import load_settings

__all__ = ["DATABASE_ENV", "SETTINGS_ENV", "Order", "create_app"]

DATABASE_ENV: Final = "FRAISEQL_DEMO_API_DATABASE_URL"
SETTINGS_ENV: Final = "FRAISEQL_DEMO_API_CONFIG"


@fraiseql.type(sql_source="tv_order")
class Order:
    id: int
    number: str
    status: str
    region: str
    total: float
    customer_email: str


@fraiseql.query
async def orders(info: Any, status: str, limit: int = 20) -> list[Order]:
    found: list[Order] = await info.context["db"].find(
        "tv_order", where={"status": {"eq": status}}, limit=limit)
    return found


@fraiseql.query
async def orders_by_customer_email(info: Any, email: str, limit: int = 20) -> list[Order]:
    found: list[Order] = await info.context["db"].find(
        "tv_order", where={"customer_email": {"eq": email}}, limit=limit)
    return found


@fraiseql.query
async def order(info: Any, id: int) -> Order | None:
    found: Order | None = await info.context["db"].find_one("tv_order", id=id)
    return found


def create_app(database_url: str | None = None, config: str | None = None) -> Any:
    """The recorded FraiseQL app (a FastAPI application); arguments default to the env vars."""
    database_url = database_url or os.environ[DATABASE_ENV]
    config = config or os.environ.get(SETTINGS_ENV)
    settings = load_settings(Path(config) if config else None)
    return create_recorded_app(
        Recorder(settings),
        config=FraiseQLConfig(database_url=database_url, environment="production",
                              database_pool_size=4),
        types=[Order], queries=[orders, orders_by_customer_email, order])
