"""One HTTP client base for every partner: mandatory timeouts, no redirects, typed errors."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import requests
from django.conf import settings


class PartnerError(Exception):
    """A partner call failed. `message` is the partner's own words where it gave any."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


class TransientError(PartnerError):
    """Try again later: connection errors, timeouts, 408, 429, 5xx."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message, status=status)
        self.retry_after = retry_after


class AuthError(PartnerError):
    """Credentials refused (401/403): the connection is faulted until someone fixes and resumes it."""


class PermanentError(PartnerError):
    """The request itself is wrong (400, 404 on the list): sending it again cannot help."""


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class PartnerClient:
    """Base for partner API clients. Subclasses describe errors with `error_message`."""

    def __init__(self, base_url: str, *, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = settings.FORWARDING["HTTP_TIMEOUT"]

    def auth_headers(self) -> dict[str, str]:
        return {}

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(
                method,
                url,
                json=json,
                params=params,
                headers={"Accept": "application/json", **self.auth_headers()},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise TransientError(f"{method} {path} timed out") from exc
        except requests.ConnectionError as exc:
            raise TransientError(f"{method} {path}: could not connect ({exc.__class__.__name__})") from exc
        except requests.RequestException as exc:  # a bad base URL and the like: fix the settings
            raise PermanentError(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
        self.raise_for_status(response)
        return response

    def json(self, response: requests.Response) -> dict:
        """The body as a JSON object; anything else is a permanent error (e.g. a wrong base URL)."""
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise PermanentError(
                f"{response.request.method} {response.url}: the answer is not a JSON object",
                status=response.status_code,
            )
        return data

    def error_message(self, response: requests.Response) -> str:
        return response.text[:500] or response.reason or f"HTTP {response.status_code}"

    def raise_for_status(self, response: requests.Response) -> None:
        status = response.status_code
        if status < 300:
            return
        message = f"HTTP {status}: {self.error_message(response)}"
        if status in (408, 429) or status >= 500:
            raise TransientError(
                message, status=status, retry_after=parse_retry_after(response.headers.get("Retry-After"))
            )
        if status in (401, 403):
            raise AuthError(message, status=status)
        raise PermanentError(message, status=status)
