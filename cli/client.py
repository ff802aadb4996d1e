"""A small HTTP client of our API, for the CLI: retries, one session per thread."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.errors import LookalikeError
from shared.records import TaskState

RETRY_STATUSES = {502, 503, 504}


class ApiError(LookalikeError):
    """The API answered with an error (or not at all)."""

    code = "api_error"

    def __init__(self, message: str, status: int = 0, code: str = "api_error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ApiClient:
    def __init__(self, base_url: str, api_key: str | None = None, retries: int = 5) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.retries = retries
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = _retrying_session(self.base_url, self.retries)
        return self._local.session

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The response; connection errors and 502/503/504 are retried with backoff, 4xx raise."""
        try:
            response = self.session.request(
                method, self.base_url + path, headers=self.headers, timeout=60, **kwargs
            )
        except requests.ConnectionError as exc:
            raise ApiError(f"cannot reach the API at {self.base_url}: {exc}") from None
        return _checked(response)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params).json()

    def post_product(self, product_id: str, image: Path, metadata: dict[str, Any]) -> Any:
        data = {"product_id": product_id, "metadata": json.dumps(metadata)}
        files = {"image": (image.name, image.read_bytes(), "application/octet-stream")}
        return self.request("POST", "/api/v1/products", data=data, files=files).json()

    def search(self, image: Path, k: int, timeout: float = 600) -> Any:
        files = {"image": (image.name, image.read_bytes(), "application/octet-stream")}
        body = self.request("POST", "/api/v1/search", data={"k": k}, files=files).json()
        deadline = time.monotonic() + timeout
        while "results" not in body:  # 202: the embed queue is busy; follow the task
            if time.monotonic() > deadline:
                raise ApiError(f"search task {body['task_id']} did not finish in {timeout:.0f}s")
            time.sleep(0.5)
            task = self.get(f"/api/v1/tasks/{body['task_id']}")
            if task["state"] == TaskState.FAILED:
                raise ApiError(task["error"]["message"], code=task["error"]["code"])
            if task["state"] == TaskState.SUCCEEDED:
                body = task["result"]
                if "error" in body:  # embedded, but this replica cannot answer it
                    raise ApiError(body["error"]["message"], code=body["error"]["code"])
        return body

    def products(self) -> Any:
        """Every product record, page by page."""
        cursor: int | None = 0
        while cursor is not None:
            page = self.get("/api/v1/products", cursor=cursor, limit=2000)
            yield from page["products"]
            cursor = page["next_cursor"]


def _retrying_session(base_url: str, retries: int) -> requests.Session:
    """A session whose every request (POSTs too: ours are idempotent) is retried with backoff;
    the environment's proxy and CA settings for base_url resolved once, not on each request
    (requests' scan of the environment was a tenth of an import's client time)."""
    retry = Retry(
        total=retries,
        backoff_factor=0.5,
        backoff_max=10,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    environment = session.merge_environment_settings(base_url, {}, None, None, None)
    session.trust_env = False
    session.proxies.update(environment["proxies"])
    session.verify = environment["verify"]
    return session


def _checked(response: requests.Response) -> requests.Response:
    if response.status_code < 400:
        return response
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), str(error["code"])
    except (ValueError, KeyError, TypeError):
        message, code = f"HTTP {response.status_code}: {response.text[:200]}", "api_error"
    raise ApiError(message, response.status_code, code)
