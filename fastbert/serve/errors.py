"""Errors as the peers send them: each route answers in its own API's style.

OpenAI routes (/v1/..., /embeddings): {"error": {"message", "type", "code", "param"}}; TEI routes:
{"error", "error_type"}. ServeError carries a status and a TEI error_type; the handlers below turn it, and
FastAPI's validation errors (malformed JSON, wrong types), into those bodies, so a bad request is always a
4xx with a JSON body, never a 5xx."""

import logging

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from fastbert.errors import bounded

log = logging.getLogger("fastbert.serve")

# status -> the OpenAI error type a client library keys on.
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
                 503: "server_error"}


class ServeError(HTTPException):
    """A request the server refuses or could not serve. error_type: TEI's (Validation, Empty, Tokenizer,
    Overloaded, Unhealthy, Backend); code: OpenAI's machine-readable code (None: none). An HTTPException
    so that FastAPI's body parsing lets it through unchanged."""

    def __init__(self, status, message, error_type="Validation", code=None, param=None):
        super().__init__(status, bounded(str(message)))
        self.message, self.error_type, self.code, self.param = bounded(str(message)), error_type, code, param


def style_for(path):
    return "openai" if path.startswith("/v1/") or path == "/embeddings" else "tei"


def error_body(style, status, message, error_type="Validation", code=None, param=None):
    if style == "openai":
        kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return {"error": message, "error_type": error_type}


def error_response(path, status, message, error_type="Validation", code=None, param=None, headers=None):
    return JSONResponse(error_body(style_for(path), status, message, error_type, code, param), status_code=status,
                        headers=headers)


def _describe(errors):
    """pydantic's errors as one line: where (body.input[3]) and what."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _serve_error(request, err):
    return error_response(request.url.path, err.status_code, err.message, err.error_type, err.code, err.param,
                          headers=getattr(err, "headers", None))


async def _http_error(request, err):
    # Starlette's own: 404 for an unknown route, 405 for a wrong method.
    return error_response(request.url.path, err.status_code, str(err.detail), "Validation")


async def _validation_error(request, err):
    errors = err.errors()
    malformed = any(error.get("type") == "json_invalid" for error in errors)
    # OpenAI answers every malformed request with a 400; TEI with a 422, except JSON it cannot parse.
    status = 400 if malformed or style_for(request.url.path) == "openai" else 422
    message = ("malformed JSON body: " if malformed else "invalid request: ") + _describe(errors)
    return error_response(request.url.path, status, message, "Validation")


async def _unexpected(request, err):
    if isinstance(err, RecursionError):  # JSON nested deeper than the parser recurses
        return error_response(request.url.path, 400, "malformed JSON body: nested too deeply", "Validation")
    log.exception("unexpected error on %s", request.url.path)
    return error_response(request.url.path, 500, f"internal error: {type(err).__name__}: {err}", "Backend")


def install(app):
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
