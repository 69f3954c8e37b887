"""Ownership of runs (studio/sessions.py, "Ownership of work"): a shared link is several
strangers; one session never lists, views, stops, resumes or deletes another's run, and ids of
others are never confirmed (the same answer as for a missing run)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from studio.jobs import ALL, NO_OWNER, JobManager
from studio.sessions import ConversationStore, new_owner, owner_of
from studio.ui import views
from tests.conftest import wait_for

TOY = "tests.jobs.toy:count"


def _req(session: str | None) -> SimpleNamespace:
    return SimpleNamespace(session_hash=session)


def test_owner_of_a_browser_secret_a_script_session_or_none():
    secret = new_owner()
    a = owner_of(secret, _req("sess-1"))
    assert a == owner_of(secret) and a.startswith("b") and len(a) == 32
    assert secret not in a and a != owner_of(new_owner())
    # no valid secret: the session (a gradio_client script), kept apart from any browser
    for bad in (None, "", "x" * 32, secret.upper(), 12):
        s1 = owner_of(bad, _req("sess-1"))
        assert s1 == owner_of(None, _req("sess-1")) and s1.startswith("s")
    assert owner_of(None, _req("sess-1")) != owner_of(None, _req("sess-2"))
    assert owner_of(None, _req(None)) is None and owner_of(None) is None
    assert len(ConversationStore.new_owner()) == 32  # the chat store's owners are the same


@pytest.fixture
def jobs(tmp_path):
    m = JobManager(tmp_path / "runs", grace_seconds=5, poll_seconds=0.1)
    yield m
    m.shutdown()


def test_list_runs_is_filtered_by_owner(jobs):
    a, b = owner_of(new_owner()), owner_of(new_owner())
    ra = jobs.submit("toy", TOY, {"steps": 1}, owner=a)
    rb = jobs.submit("toy", TOY, {"steps": 1}, owner=b)
    shared = jobs.submit("toy", TOY, {"steps": 1})  # a bench, a test, an old run
    for r in (ra, rb, shared):
        jobs.wait(r, timeout=60)

    def ids(**kw):
        return {v.id for v in jobs.list_runs("toy", **kw)}

    assert ids(owner=a) == {ra, shared} and ids(owner=b) == {rb, shared}
    assert ids() == ids(owner=ALL) == {ra, rb, shared}
    assert ids(owner=None) == {shared}  # a page without a session: the shared ones only
    assert jobs.view(ra).owner == a and jobs.view(shared).owner is None
    assert jobs.owns(ra, a) and jobs.owns(shared, a) and not jobs.owns(ra, b)
    assert jobs.check(ra, a)["id"] == ra


def test_another_owners_run_is_answered_as_a_missing_one(jobs):
    a, b = owner_of(new_owner()), owner_of(new_owner())
    blocker = jobs.submit("toy", TOY, {"steps": 400, "sleep": 0.05}, owner=a)
    wait_for(lambda: jobs.view(blocker).status == "running", timeout=60)
    ra = jobs.submit("toy", TOY, {"steps": 2}, owner=a)  # queued behind the blocker
    with pytest.raises(KeyError) as missing:
        jobs.view("20990101-000000-toy-abcdef", owner=b)
    for call in (lambda: jobs.view(ra, owner=b), lambda: jobs.check(ra, b),
                 lambda: jobs.cancel(ra, owner=b), lambda: jobs.resume(ra, owner=b),
                 lambda: jobs.delete(ra, owner=b)):
        with pytest.raises(KeyError) as theirs:
            call()
        # the same words as for a run that does not exist, only the id differs
        assert str(theirs.value).replace(ra, "ID") == \
            str(missing.value).replace("20990101-000000-toy-abcdef", "ID")
    assert jobs.view(ra).status == "queued"  # nothing happened to it
    assert jobs.cancel(ra, owner=a) == "cancelled"
    with pytest.raises(KeyError):
        jobs.resume(ra, owner=b)
    assert jobs.view(ra).status == "cancelled"
    assert jobs.resume(ra, owner=a) == ra and jobs.view(ra).status == "queued"
    assert jobs.cancel(blocker, owner=a) == "stopping"
    assert jobs.wait(ra, timeout=60).status == "succeeded"
    jobs.delete(ra, owner=a)
    with pytest.raises(KeyError):
        jobs.view(ra)


def test_an_ownerless_run_is_read_only_for_a_session_and_no_session_cannot_submit(jobs):
    a = owner_of(new_owner())
    shared = jobs.submit("toy", TOY, {"steps": 1})
    jobs.wait(shared, timeout=60)
    assert jobs.view(shared, owner=a).status == "succeeded"  # seen and used by all
    for call in (lambda: jobs.resume(shared, owner=a), lambda: jobs.cancel(shared, owner=a),
                 lambda: jobs.delete(shared, owner=a)):
        with pytest.raises(PermissionError, match="outside the studio's pages; it is read-only"):
            call()
    assert jobs.run_dir(shared).is_dir()
    with pytest.raises(ValueError, match=NO_OWNER):
        jobs.submit("toy", TOY, {"steps": 1}, owner=None)
    jobs.delete(shared)  # internal callers (ALL) may
    assert not jobs.run_dir(shared).exists()


def test_the_queue_shows_another_sessions_run_without_its_id_or_title(jobs):
    from studio.app import job_choices

    a, b = owner_of(new_owner()), owner_of(new_owner())
    rb = jobs.submit("toy", TOY, {"steps": 400, "sleep": 0.05}, title="B's secret project",
                     owner=b)
    wait_for(lambda: jobs.view(rb).status == "running", timeout=60)
    ra = jobs.submit("toy", TOY, {"steps": 2}, title="Mine", owner=a)
    rows = views.queue_rows(jobs.queue(), a)
    text = repr(rows)
    assert rb not in text and "secret project" not in text
    assert rows[0][:3] == ["", "another session's toy run", "running"]
    assert rows[1][:3] == [ra, "Mine", "queued"]
    assert rows[1][5] == "waiting for another session's toy run to finish (one job at a time)"
    assert rb in repr(views.queue_rows(jobs.queue()))  # internal: whole
    studio = SimpleNamespace(jobs=jobs)
    assert job_choices(studio, rb, a)["choices"] == [("Mine · queued", ra)]
    assert job_choices(studio, rb, a)["value"] is None
    jobs.cancel(ra)
    jobs.cancel(rb)
    jobs.wait(rb, timeout=60)


def test_job_panel_lists_and_shows_only_the_owners_runs(studio):
    from studio.ui.widgets import job_panel

    with gr.Blocks():
        panel = job_panel(studio, kind="toy")
    sa, sb = new_owner(), new_owner()
    a, b = owner_of(sa), owner_of(sb)
    ra = studio.jobs.submit("toy", TOY, {"steps": 1}, title="A's run", owner=a)
    studio.jobs.wait(ra, timeout=60)
    picked = panel.select(ra, studio, a)
    assert picked["value"] == ra and [v for _, v in picked["choices"]] == [ra]
    assert panel.select(ra, studio, b)["choices"] == []
    *shown, _key = panel.refresh(ra, None, sa, _req("x"))
    assert "succeeded" in shown[0]
    *hidden, key = panel.refresh(ra, None, sb, _req("y"))
    assert hidden[0] == f"No run {ra}." and hidden[4] is None and key[0] is None


def test_one_owner_state_per_page_its_api_parameter_optional(tmp_path):
    from studio.ui.widgets import owner_state

    key_file = tmp_path / "k" / "browser-state.key"
    with gr.Blocks() as demo:
        first = owner_state(key_file=key_file)
        assert owner_state() is first
    with gr.Blocks():
        other = owner_state(key_file=key_file)
    assert other is not first and other.secret == first.secret  # the key survives a restart
    assert key_file.stat().st_mode & 0o077 == 0
    props = next(c for c in demo.get_config_file()["components"] if c["id"] == first._id)
    assert props["type"] == "browserstate" and props["props"]["storage_key"] == \
        "studio-chat-owner"
    # no initial value in the page (the page would send it before the stored secret is read)
    assert "value" not in props["props"]


def test_the_owner_is_an_optional_api_parameter_for_scripts():
    from studio.ui.widgets import owner_state

    with gr.Blocks() as demo:
        box = gr.Textbox()

        def echo(text, *values):
            return text

        gr.Button().click(echo, inputs=[box, box, owner_state()], outputs=[box], api_name="echo")
    params = demo.get_api_info()["named_endpoints"]["/echo"]["parameters"]
    assert [p["parameter_has_default"] for p in params] == [False, False, True]
    assert params[-1]["parameter_default"] == ""


def test_a_path_inside_another_owners_run_or_its_export_is_refused(studio):
    from tabs.vlm import adapt

    a, b = owner_of(new_owner()), owner_of(new_owner())
    ra = studio.jobs.submit("toy", TOY, {"steps": 1}, owner=a)
    studio.jobs.wait(ra, timeout=60)
    adapter = studio.jobs.run_dir(ra) / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    exported = studio.settings.exports_dir / "vlm" / ra / "adapter"
    exported.mkdir(parents=True)
    (exported / "adapter_config.json").write_text("{}")
    ex = studio.settings.exports_dir
    for p in (adapter, exported, adapter / ".." / "adapter"):
        studio.jobs.check_path(p, a, ex)  # the owner's own
        with pytest.raises(KeyError):
            studio.jobs.check_path(p, b, ex)
    studio.jobs.check_path(studio.settings.home / "uploads", b, ex)  # not a run's: no business
    assert adapt.adapter_folder(studio, str(exported), a) == str(exported.resolve())
    with pytest.raises(ValueError, match="does not exist"):  # as a missing path is answered
        adapt.adapter_folder(studio, str(adapter), b)


def test_tuned_whisper_models_are_offered_to_their_owner_only(studio):
    import json
    import time

    from tabs.whisper_ft import service as ft

    a, b = owner_of(new_owner()), owner_of(new_owner())
    rid = "20260101-000000-whisper_ft-a1a1a1"
    run = studio.jobs.runs_dir / rid
    (run / "ct2-int8").mkdir(parents=True)
    (run / "ct2-int8" / "config.json").write_text("{}")
    (run / "ct2-int8" / "RUN_CARD.md").write_text("A's card")
    (run / "run.json").write_text(json.dumps({"id": rid, "kind": ft.KIND, "status": "succeeded",
                                              "created": time.time(), "owner": a}))
    model = str(run / "ct2-int8")
    assert [p for _, p in ft.tuned_models(studio, a)] == [model]
    assert ft.tuned_models(studio, b) == [] and ft.tuned_models(studio, None) == []
    assert ft.run_card(studio, model, a) == "A's card" and ft.run_card(studio, model, b) == ""
