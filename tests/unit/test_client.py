"""The CLI's HTTP client takes the environment's proxy settings, resolved once."""

from __future__ import annotations

import pytest

from cli.client import ApiClient

PROXY = "http://proxy.test:3128"


@pytest.mark.parametrize(
    ("environment", "api", "proxied"),
    [
        ({"HTTP_PROXY": PROXY}, "http://api.test:8000", True),
        ({"http_proxy": PROXY}, "http://api.test:8000", True),
        ({"HTTP_PROXY": PROXY, "NO_PROXY": "api.test"}, "http://api.test:8000", False),
        ({"HTTPS_PROXY": PROXY}, "http://api.test:8000", False),  # another scheme's proxy
        ({}, "http://api.test:8000", False),
    ],
)
def test_client_uses_the_environment_s_proxy_for_the_api(monkeypatch, environment, api, proxied):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    session = ApiClient(api).session
    assert session.proxies.get("http") == (PROXY if proxied else None)
    assert session.trust_env is False  # not scanned again on every request
