"""Reading request bodies: the REST API's one parser (strict JSON, config/strict_json.py) and a guard
against bodies whose length Django cannot know.

* StrictJSONParser: the REST API reads JSON only (any other Content-Type answers 415) and strictly: NaN,
  Infinity, `1e400`, a NUL, a lone surrogate or nesting past 64 levels answer 400 `parse_error`, with the
  path of the offending value under `errors`.
* RequireKnownLength: Django reads a body by its Content-Length. A chunked body has none, so behind a
  server that does not buffer it (config/web.py's gunicorn worker does) Django would read it as empty,
  and the REST framework as `{}`. Such a request answers 411 instead of being read as something it is not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, parsers

from config import strict_json


class JsonParseError(exceptions.ParseError):
    """A body that is not strict JSON; `path` names where (`$`: the body as a whole)."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"JSON parse error at {path}: {message}")
        self.message = message


class StrictJSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        try:
            return strict_json.loads(stream.read())
        except strict_json.JsonError as exc:
            raise JsonParseError(exc.path, exc.message) from None


class RequireKnownLength:
    """Middleware: 411 for a chunked request that reached Django without a Content-Length (see above)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not request.META.get("CONTENT_LENGTH"):
            return JsonResponse(
                {
                    "code": "length_required",
                    "detail": "A chunked body cannot be read here: send a Content-Length.",
                    "errors": {},
                }
                if request.path.startswith("/api/")
                else {"errors": [{"code": "length_required", "message": "Send a Content-Length."}]},
                status=411,
            )
        return self.get_response(request)


# Ids in query strings: ASCII digits only (str.isdigit() also takes "²", which int() refuses), and short
# enough for a bigint (a longer number overflows the database's comparison).
MAX_ID_DIGITS = 18


def id_from_query(value: str | None) -> int | None:
    """A positive id given in a query string (`?output=12`), or None for anything else."""
    if value and value.isascii() and value.isdigit() and len(value) <= MAX_ID_DIGITS and int(value) > 0:
        return int(value)
    return None
