"""`python -m studio.llm.server --api-key KEY`: without the key nothing answers and nothing
describes the API."""

from __future__ import annotations

from fastapi.testclient import TestClient

from studio.llm.server import create_app


def test_api_key_is_required_and_the_schema_is_closed():
    app = create_app(engine=None, model_name="tiny", api_key="s3cret-key")  # type: ignore[arg-type]
    c = TestClient(app)
    for path in ("/v1/models", "/openapi.json", "/docs"):
        r = c.get(path)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"], path
    assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = c.get("/v1/models", headers={"Authorization": "Bearer s3cret-key"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "tiny"
    assert c.get("/openapi.json", headers={"Authorization": "Bearer s3cret-key"}
                 ).status_code == 404, "no schema even with the key"


def test_without_a_key_the_server_stays_open_on_loopback():
    c = TestClient(create_app(engine=None, model_name="tiny"))  # type: ignore[arg-type]
    assert c.get("/v1/models").status_code == 200


def test_a_reachable_host_gets_a_generated_key(monkeypatch, capsys):
    import uvicorn

    import studio.llm.engine as eng
    from studio.llm import server

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setattr(eng, "TransformersEngine", lambda *a, **k: None)
    monkeypatch.delenv("STUDIO_API_KEY", raising=False)
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        server.main(["--model", "x", "--host", "0.0.0.0", "--home", home])
    key = capsys.readouterr().out.strip().splitlines()[-1].strip()
    c = TestClient(seen["app"])
    assert c.get("/v1/models").status_code == 401
    assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
