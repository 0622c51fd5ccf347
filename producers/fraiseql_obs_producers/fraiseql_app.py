"""Recording a FraiseQL 0.5.x API: one call, no change to its resolvers.

::

    from fraiseql_obs_producers import Recorder
    from fraiseql_obs_producers.fraiseql_app import create_recorded_app

    recorder = Recorder(load_settings())
    app = create_recorded_app(recorder, config=FraiseQLConfig(database_url=...),
                              types=[Order], queries=[orders])   # create_fraiseql_app's arguments

What it attaches (FraiseQL 0.5.x, ``pip install 'fraiseql-observability[fraiseql]'``):

* **the pool**: FraiseQL's lifespan creates its psycopg ``AsyncConnectionPool``
  (``fraiseql.fastapi.app.create_db_pool``) and publishes it with
  ``fraiseql.fastapi.dependencies.set_db_pool``; the lifespan added here replaces it by an
  identical pool (same URL, size, timeout and FraiseQL's type loaders) whose connections use
  :func:`~fraiseql_obs_producers.instrument.async_recording_cursor`. Every statement FraiseQL runs
  -- ``FraiseQLRepository.find/find_one/run``, the production-mode raw JSON executor -- goes
  through those cursors; its ``BEGIN``, ``SET LOCAL statement_timeout`` and ``COMMIT`` are skipped
  and the filter values it inlines become ``$n`` (:mod:`fraiseql_obs_producers.normalize`).
* **the operation names**: the ``context_getter`` added here (wrapping yours, if any) sets
  :data:`~fraiseql_obs_producers.instrument.current_operation` to the request's GraphQL
  ``operationName``, else the name of the document's first operation, else its first root
  field -- FastAPI awaits it in the request's task, so every statement of the request carries it.
* **the recorder's life**: started at application startup (after a fork, as the recorder
  requires), flushed and closed at shutdown.

:func:`recording_lifespan` and :func:`recording_context_getter` are the two pieces, for an app
built another way. Nothing here patches FraiseQL.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import lru_cache
from typing import Any

from .instrument import async_recording_cursor, set_operation_name
from .recorder import Recorder

__all__ = [
    "create_recorded_app",
    "operation_name_of",
    "recording_context_getter",
    "recording_lifespan",
]

ContextGetter = Callable[..., Awaitable[dict[str, Any]]]
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]
_NAME_CACHE_SIZE = 1024


@lru_cache(maxsize=_NAME_CACHE_SIZE)
def _document_name(query: str) -> str | None:
    """The first operation's name, else its first root field (graphql-core's parser; cached)."""
    from graphql import parse  # noqa: PLC0415 - FraiseQL's own dependency
    from graphql.language import FieldNode, OperationDefinitionNode  # noqa: PLC0415

    try:
        document = parse(query, no_location=True)
    except Exception:
        return None
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            if definition.name is not None:
                return definition.name.value
            for selection in definition.selection_set.selections:
                if isinstance(selection, FieldNode):
                    return selection.name.value
            return None
    return None


def operation_name_of(body: Any) -> str | None:
    """The query name of one GraphQL-over-HTTP request body (a decoded JSON object)."""
    if not isinstance(body, dict):
        return None
    name = body.get("operationName")
    if isinstance(name, str) and name:
        return name
    query = body.get("query")
    return _document_name(query) if isinstance(query, str) else None


def recording_context_getter(inner: ContextGetter | None = None) -> ContextGetter:
    """A FraiseQL ``context_getter`` naming the request's statements, then calling ``inner``."""
    import inspect  # noqa: PLC0415

    inner_takes_user = inner is not None and len(inspect.signature(inner).parameters) >= 2

    async def context_getter(request: Any, user: Any = None) -> dict[str, Any]:
        try:
            # Starlette caches the body FastAPI already read for the endpoint: no second read.
            body = json.loads(await request.body())
        except Exception:
            body = None
        set_operation_name(operation_name_of(body))
        if inner is None:
            return {}
        if inner_takes_user:
            return await inner(request, user)
        return await inner(request)

    return context_getter


def recording_lifespan(recorder: Recorder, inner: Lifespan | None = None) -> Lifespan:
    """A lifespan for ``create_fraiseql_app``: recording pool in, recorder started and closed."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        # Optional dependency, untyped: held as Any.
        fastapi_app: Any = importlib.import_module("fraiseql.fastapi.app")
        dependencies: Any = importlib.import_module("fraiseql.fastapi.dependencies")

        recorder.start()
        config = dependencies.get_fraiseql_config()
        plain = dependencies.get_db_pool()
        pool = await fastapi_app.create_db_pool(
            str(config.database_url), min_size=1, max_size=config.database_pool_size,
            timeout=config.database_pool_timeout,
            kwargs={"cursor_factory": async_recording_cursor(recorder)})
        dependencies.set_db_pool(pool)  # FraiseQL closes whatever pool is set when it stops
        await plain.close()
        try:
            if inner is None:
                yield
            else:
                async with inner(app):
                    yield
        finally:
            await recorder.aclose()

    return lifespan


def create_recorded_app(recorder: Recorder, *, context_getter: ContextGetter | None = None,
                        lifespan: Lifespan | None = None, **kwargs: Any) -> Any:
    """``fraiseql.create_fraiseql_app(**kwargs)`` with every statement recorded into ``recorder``."""
    from fraiseql.fastapi import create_fraiseql_app  # noqa: PLC0415 - optional dependency

    return create_fraiseql_app(context_getter=recording_context_getter(context_getter),
                               lifespan=recording_lifespan(recorder, lifespan), **kwargs)
