"""POST /v2/events and POST /v2/bulkevents, wire-compatible with mParticle's Events API.

Plain Django views (no REST framework): this is the hot path, and the format is mParticle's, not ours.
Every answer is JSON: 202 accepted, 400 with {"errors": [{"path", "message"}]}, 401 without a valid active
input key and secret (HTTP Basic), 405 for a method other than POST, 413 over EVENTS_API_MAX_BYTES.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from audiences.events_api.ingest import BATCH_DATA_ERRORS, ingest_batches, ingest_each_alone, refusal
from audiences.events_api.parsing import BatchError, ParsedBatch, parse_batch
from audiences.inputs import authenticate
from audiences.models import Input
from config import metrics, ratelimit, strict_json


def _error(status: int, message: str, *, path: str | None = None, code: str | None = None) -> JsonResponse:
    error: dict[str, str] = {"message": message}
    if path is not None:
        error = {"path": path, **error}
    if code is not None:
        error = {"code": code, **error}
    return JsonResponse({"errors": [error]}, status=status)


def _counted(view: Callable[[HttpRequest], JsonResponse]) -> Callable[[HttpRequest], JsonResponse]:
    """Count the answers that are errors, by status and code (config/metrics.py); batches are counted
    by the views, which know how many of a request's batches were accepted."""

    @wraps(view)
    def counted(request: HttpRequest) -> JsonResponse:
        response = view(request)
        if response.status_code >= 400:
            try:
                code = json.loads(response.content)["errors"][0].get("code", "invalid")
            except (ValueError, KeyError, IndexError, TypeError):
                code = "unknown"
            metrics.EVENTS_API_ERRORS.labels(str(response.status_code), code).inc()
        return response

    return counted


def _count_batches(accepted: int, refused: int) -> None:
    if accepted:
        metrics.EVENTS_API_BATCHES.labels("accepted").inc(accepted)
    if refused:
        metrics.EVENTS_API_BATCHES.labels("refused").inc(refused)


def _basic_credentials(request: HttpRequest) -> tuple[str, str] | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    key, sep, secret = decoded.partition(":")
    if not sep or strict_json.UNSTORABLE.search(decoded):
        return None  # a NUL cannot be in a key or secret we issued (nor be looked up): plain 401
    return key, secret


def _read_json(request: HttpRequest) -> tuple[Input | None, Any, JsonResponse | None]:
    """Authenticate, check the size (before parsing), parse the JSON: (input, data, None) or an error."""
    if request.method != "POST":
        response = _error(405, "Use POST.", code="method_not_allowed")
        response["Allow"] = "POST"
        return None, None, response
    credentials = _basic_credentials(request)
    if (refused := ratelimit.authentication_refused(request, credentials)) is not None:
        return None, None, refused
    input = authenticate(*credentials) if credentials else None
    if input is None:
        ratelimit.authentication_failed(request, credentials)
        response = _error(401, "Unauthorized: give an active input's key and secret (HTTP Basic).", code="unauthorized")
        response["WWW-Authenticate"] = 'Basic realm="events"'
        return None, None, response
    limit = settings.EVENTS_API_MAX_BYTES
    too_big = _error(413, f"The request is larger than {limit} bytes.", code="request_too_large")
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None, None, too_big
    try:
        body = request.body
    except RequestDataTooBig:
        return None, None, too_big
    if len(body) > limit:
        return None, None, too_big
    try:
        # Strict (config/strict_json.py); the values (NaN, NUL, ...) are checked per batch by parse_batch,
        # so that in a bulk request only the batch holding one is refused.
        data = strict_json.loads(body, check_values=False)
    except strict_json.JsonError as exc:
        return None, None, _error(400, exc.message, path=exc.path, code="malformed_json")
    if (refused := ratelimit.batches_refused(request, input, len(data) if isinstance(data, list) else 1)) is not None:
        return None, None, refused
    return input, data, None


@csrf_exempt
@_counted
def events(request: HttpRequest) -> JsonResponse:
    """One batch: 202 {"accepted": true} when stored (or already stored under its source_request_id),
    400 with every problem of the batch and its path; nothing of a refused batch is written."""
    input, data, error = _read_json(request)
    if error is not None:
        return error
    try:
        batch = parse_batch(data)
    except BatchError as exc:
        _count_batches(0, 1)
        return JsonResponse({"errors": exc.errors}, status=400)
    try:
        result = ingest_batches(input, [batch])
    except BATCH_DATA_ERRORS as exc:
        # Parsing let through something the database refuses: this batch's fault, so a 400, not a 500.
        return _error(400, refusal(exc), path="$", code="invalid")
    _count_batches(1, 0)
    return JsonResponse({"accepted": True, "duplicate": bool(result.duplicates)}, status=202)


@csrf_exempt
@_counted
def bulk_events(request: HttpRequest) -> JsonResponse:
    """A JSON array of batches. Each batch stands alone: a bad batch is refused and named (its errors' paths
    start with its index, e.g. "[3].user_identities.email"), and the good ones are stored all the same, as
    if they had been sent one by one. So a client needs to resend only the refused batches:

    * every batch good: 202 {"accepted": [0, 1, ...]};
    * some refused: 400 {"accepted": [indexes stored], "errors": [{"path": "[i]....", "message": ...}]}
      (the accepted ones are stored; "accepted" may be empty).

    Batches repeating a source_request_id already received count as accepted (they were, the first time).
    """
    input, data, error = _read_json(request)
    if error is not None:
        return error
    if not isinstance(data, list):
        return _error(400, "Expected a JSON array of batches.", path="$", code="invalid")
    good: list[tuple[int, ParsedBatch]] = []
    errors: list[dict[str, str]] = []
    for index, item in enumerate(data):
        try:
            good.append((index, parse_batch(item, path=f"[{index}]")))
        except BatchError as exc:
            errors.extend(exc.errors)
    refused = ingest_each_alone(input, [batch for _, batch in good]) if good else {}
    for position, reason in refused.items():
        errors.append({"path": f"[{good[position][0]}]", "message": reason})
    accepted = [index for position, (index, _) in enumerate(good) if position not in refused]
    _count_batches(len(accepted), len(data) - len(accepted))
    if errors:
        return JsonResponse({"accepted": accepted, "errors": errors}, status=400)
    return JsonResponse({"accepted": accepted}, status=202)
