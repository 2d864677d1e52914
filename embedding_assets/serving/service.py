"""`embedding-assets serve`: a long-lived HTTP search service over the served index.

It holds the model and the served table open between queries (a `ServedSearch`) and follows the serving
pointer: after a promotion or a rollback the next query is answered from the new state, without a
restart, and each answer comes from exactly one state (the one it names). Loopback only unless told
otherwise; request bodies, query lengths and k are capped.

    GET  /search?q=...&k=10        the JSON of `embedding-assets search --json`
    POST /search {"query": ..., "k": 10}
    GET  /health                   what is served, and since when (and the shadow's counts)

With a shadow (`serve --shadow V`), a share of queries is mirrored to candidate V off the answer's path
(`shadow`).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from embedding_assets.serving.filters import SearchFilter
from embedding_assets.serving.search import InvalidSearchError, ServedSearch, checked_request
from embedding_assets.serving.shadow import Shadow

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8477
MAX_BODY_BYTES = 64 * 1024
DEFAULT_K = 10


class BadRequest(ValueError):
    """A request the service refuses, with the reason it gives back (HTTP 400 or 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SearchRequest:
    query: str
    k: int
    where: SearchFilter | None = None

    @classmethod
    def parse(cls, query: Any, k: Any, where: Any = None) -> SearchRequest:
        """A request from untrusted values: a refusal (BadRequest) names the first thing wrong. `where`:
        the filter's fields (SearchFilter), as a JSON object or query parameters."""
        if k is None:
            k = DEFAULT_K
        if isinstance(k, str) and k.strip().lstrip("-").isdigit():
            k = int(k)
        try:
            query, k = checked_request(query, k)
        except InvalidSearchError as exc:
            raise BadRequest(str(exc), 413 if exc.too_large else 400) from exc
        return cls(query, k, _filter(where))


def _filter(where: Any) -> SearchFilter | None:
    if where is None or where == {}:
        return None
    if not isinstance(where, dict):
        raise BadRequest("'filter' must be a JSON object of SearchFilter fields")
    try:
        return SearchFilter.model_validate(where)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "filter"
        raise BadRequest(f"filter {field}: {first['msg']}") from exc


class SearchService:
    """The search behind the HTTP API: one `ServedSearch`, its searcher switched under a lock."""

    def __init__(self, served: ServedSearch, shadow: Shadow | None = None):
        self.served, self.shadow = served, shadow
        self._lock = threading.Lock()
        self.queries = 0

    def search(self, request: SearchRequest) -> dict[str, Any]:
        """The served state's answer; with a shadow, a share of queries is then mirrored to its
        candidate in the background (never while the served version is the candidate itself)."""
        with self._lock:  # the pointer is read, and a new state opened, by one request at a time
            searcher = self.served.searcher()
            self.queries += 1
        answer = searcher.search(request.query, request.k, request.where).to_json()
        if self.shadow is not None and answer["model_version"] != self.shadow.searcher.version.id:
            self.shadow.offer(request.query, request.k, request.where, answer)
        return answer

    def health(self) -> dict[str, Any]:
        state = self.served.pointer.current()
        return {
            "status": "ok" if state is not None else "nothing served",
            "model_version": state.version if state else None,
            "table_version": state.table_version if state else None,
            "serving_since": state.serving_since.isoformat() if state else None,
            "queries": self.queries,
            **({"shadow": self.shadow.stats()} if self.shadow is not None else {}),
        }


def create_app(service: SearchService) -> Starlette:
    async def search(request: Request) -> JSONResponse:
        try:
            if request.method == "POST":
                body = await _limited_body(request)
                try:
                    payload = json.loads(body or b"{}")
                except json.JSONDecodeError as exc:
                    raise BadRequest(f"the body is not JSON: {exc}") from exc
                if not isinstance(payload, dict):
                    raise BadRequest("the body must be a JSON object")
                parsed = SearchRequest.parse(payload.get("query"), payload.get("k"), payload.get("filter"))
            else:
                params = request.query_params
                where = {f: params[f] for f in SearchFilter.model_fields if f in params}
                parsed = SearchRequest.parse(params.get("q"), params.get("k"), where)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        try:
            return JSONResponse(await run_in_threadpool(service.search, parsed))
        except RuntimeError as exc:  # nothing served, a state gone: say so, keep serving
            return JSONResponse({"error": str(exc)}, status_code=503)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service.health))

    return Starlette(
        routes=[Route("/search", search, methods=["GET", "POST"]), Route("/health", health, methods=["GET"])]
    )


async def _limited_body(request: Request) -> bytes:
    """The request body, refused past MAX_BODY_BYTES however the client announces its length."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"the body has {declared} bytes; at most {MAX_BODY_BYTES}", 413)
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(f"the body exceeds {MAX_BODY_BYTES} bytes", 413)
    return body


def serve(service: SearchService, host: str = LOOPBACK, port: int = DEFAULT_PORT, log_level: str = "warning"):
    """Run the service until interrupted (blocking)."""
    import uvicorn

    try:
        service.served.searcher()  # load the model and open the table before the first request
    except RuntimeError as exc:  # nothing served yet: answer 503 until something is
        print(f"warning: {exc}")
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, access_log=False)
    finally:
        if service.shadow is not None:
            service.shadow.drain()
