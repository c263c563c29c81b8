"""HTTP plumbing for the ingress: API-key and body-size guard, strict JSON parsing, clean error bodies."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.logging_setup import clean_request_id, request_context

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
JSON_CONTENT_TYPES = ("application/json",)


class NonFiniteNumber:
    """Stands in for a JSON NaN/Infinity so validation rejects it *naming the field* it sits in."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:
        return self.token


class BodyTooLargeError(HTTPException):
    """An HTTPException so FastAPI's body reader re-raises it untouched, and it renders as JSON."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds the limit of {limit} bytes")


class StrictJSONRequest(Request):
    """NaN/Infinity never become floats (the stdlib would accept them; JSON does not)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # json.JSONDecodeError is turned into a 422 'json_invalid' by FastAPI, with the position.
            body = await self.body()
            try:
                text = body.decode("utf-8")  # RFC 8259: JSON between systems is UTF-8
            except UnicodeDecodeError as exc:
                # Otherwise FastAPI answers an undocumented 400 with no hint of what is wrong.
                raise json.JSONDecodeError("the body is not UTF-8 text", "", exc.start) from None
            self._json = json.loads(text, parse_constant=NonFiniteNumber)
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose handler sees StrictJSONRequest (FastAPI's documented custom-request pattern) and
    refuses bodies not declared as JSON with a 415 instead of a puzzling validation error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            if request.method == "POST":
                content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if content_type not in JSON_CONTENT_TYPES:
                    raise HTTPException(
                        415, detail="send the body as JSON with Content-Type: application/json"
                    )
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


def _clean_error(err: dict[str, Any]) -> dict[str, Any]:
    """loc/msg/type only: the offending input is never echoed back (it may be sensitive)."""
    msg = str(err.get("msg", "invalid"))
    if isinstance(err.get("input"), NonFiniteNumber):
        msg = f"{err['input']!r} is not valid JSON: send a finite number"
    elif err.get("type") == "json_invalid":
        msg = f"malformed JSON: {err.get('ctx', {}).get('error', 'cannot parse the body')}"
    return {"loc": list(err.get("loc", ())), "msg": msg, "type": str(err.get("type", "value_error"))}


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={"detail": [_clean_error(dict(e)) for e in errors]})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error_handler)


def keys_match(candidate: str | None, keys: Iterable[bytes]) -> bool:
    """Constant-time comparison against every configured key (no early exit reveals which one matched)."""
    given = (candidate or "").encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched and bool(given)


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class GuardMiddleware:
    """Outermost ASGI layer: request id, API key, body size, and a JSON 500 for genuine bugs.

    Auth runs before a single body byte is read, so an unauthenticated client learns nothing from
    validation errors and cannot make the server buffer a large body.
    """

    def __init__(self, app: ASGIApp, *, api_keys: Iterable[str], max_body_bytes: int) -> None:
        self.app = app
        self.api_keys = tuple(k.encode("utf-8") for k in api_keys if k)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = clean_request_id(headers.get("x-request-id"))
        extra = {"X-Request-ID": request_id}
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        with request_context(request_id):
            if scope["path"] not in PUBLIC_PATHS and not keys_match(
                headers.get(API_KEY_HEADER), self.api_keys
            ):
                await _send_json(
                    send,
                    401,
                    {"detail": f"missing or invalid {API_KEY_HEADER} header"},
                    {**extra, "WWW-Authenticate": "ApiKey"},
                )
                return
            declared = headers.get("content-length")
            if declared is not None:
                if not declared.isdigit():
                    await _send_json(send, 400, {"detail": "Content-Length must be a whole number"}, extra)
                    return
                if int(declared) > self.max_body_bytes:
                    await _send_json(
                        send, 413, {"detail": BodyTooLargeError(self.max_body_bytes).detail}, extra
                    )
                    return
            received = 0

            async def limited_receive() -> Message:
                # Content-Length may be absent (chunked) or lie: count what actually arrives.
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise BodyTooLargeError(self.max_body_bytes)
                return message

            try:
                await self.app(scope, limited_receive, tracked_send)
            except BodyTooLargeError as exc:
                if not started:
                    await _send_json(send, 413, {"detail": exc.detail}, extra)
            except Exception:
                logger.exception("unhandled error on %s %s", scope.get("method"), scope["path"])
                if not started:
                    body = {
                        "detail": "internal error; quote the request id when reporting it",
                        "request_id": request_id,
                    }
                    await _send_json(send, 500, body, extra)
