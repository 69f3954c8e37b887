"""Behind a login nothing describes the API, wrong passwords are slowed per client, and an
address other machines can reach gets a password like a share link does."""

from __future__ import annotations

import httpx
import pytest

from studio.config import settings_from_args
from studio.security import LoginThrottle, is_loopback
from tests.conftest import free_port


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    from studio.app import build_app, launch_kwargs
    from studio.config import Settings
    from studio.context import build_studio

    s = build_studio(Settings(home=tmp_path_factory.mktemp("home"), profile="small",
                              port=free_port(), auth=[("ann", "right-horse-battery")]))
    app = build_app(s, tab_modules=["tests.app.toytab"])
    app.queue()
    app.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(s))
    yield app.local_url.rstrip("/")
    app.close()
    s.close()


def test_the_login_page_and_open_routes_describe_nothing(locked):
    page = httpx.get(locked + "/")
    assert page.status_code == 200 and "gradio_config" in page.text
    for leak in ("toy_start", "studio_status", "named_endpoints", "parameter_name"):
        assert leak not in page.text, f"{leak!r} on the login page"
    for route in ("/openapi.json", "/docs", "/gradio_api/info", "/gradio_api/openapi.json",
                  "/config"):
        r = httpx.get(locked + route)
        assert r.status_code in (401, 404) or "toy_start" not in r.text, route
        assert "toy_start" not in r.text and "studio_status" not in r.text, route


def test_signed_in_the_api_is_described_and_scriptable(locked):
    from gradio_client import Client

    with httpx.Client() as c:
        r = c.post(locked + "/login", data={"username": "ann", "password": "right-horse-battery"})
        assert r.status_code == 200
        assert "toy_start" in c.get(locked + "/gradio_api/info").text
        assert "toy_start" in c.get(locked + "/").text
    client = Client(locked + "/", auth=("ann", "right-horse-battery"), verbose=False)
    assert "CPU only" in client.predict(api_name="/studio_status")["device"]


def test_fifty_wrong_passwords_then_the_right_one_is_still_refused(locked):
    headers = {"X-Forwarded-For": "203.0.113.9"}  # one client behind the share tunnel
    codes = [httpx.post(locked + "/login", headers=headers,
                        data={"username": "ann", "password": f"guess{i}"}).status_code
             for i in range(50)]
    assert codes[:5] == [400] * 5, "the first few mistakes are free"
    assert codes.count(429) >= 40, codes
    r = httpx.post(locked + "/login", headers=headers,
                   data={"username": "ann", "password": "right-horse-battery"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "try again in" in r.json()["detail"]
    other = httpx.post(locked + "/login", headers={"X-Forwarded-For": "198.51.100.7"},
                       data={"username": "ann", "password": "right-horse-battery"})
    assert other.status_code == 200, "another client is not locked out"


def test_throttle_waits_double_and_a_success_clears():
    now = [0.0]
    t = LoginThrottle(free_failures=2, base_wait_s=1.0, clock=lambda: now[0])
    for _ in range(2):
        t.failed("a")
    assert t.wait_s("a") == 1.0
    t.failed("a")
    assert t.wait_s("a") == 2.0
    now[0] = 2.5
    assert t.wait_s("a") == 0.0
    t.succeeded("a")
    t.failed("a")
    assert t.wait_s("a") == 0.0


def test_a_reachable_host_without_share_gets_a_generated_password():
    s = settings_from_args(["--host", "0.0.0.0"], env={})
    assert s.auth and s.generated_password and len(s.auth[0][1]) >= 12
    assert settings_from_args(["--host", "192.168.1.20"], env={}).generated_password
    local = settings_from_args(["--host", "127.0.0.1"], env={})
    assert not local.auth and not local.generated_password
    given = settings_from_args(["--host", "0.0.0.0", "--auth", "me:pw"], env={})
    assert given.auth == [("me", "pw")] and not given.generated_password
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("example.org")
