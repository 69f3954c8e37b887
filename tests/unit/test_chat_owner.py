"""Chat's "Local path" source: an adapter folder inside another owner's run or export is
answered as a missing path (a shared link is several strangers; run ids are not secrets)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from studio.jobs import JobManager
from studio.sessions import new_owner, owner_of
from tabs.chat import service
from tabs.chat.service import PATH, ChatConfig


@pytest.fixture
def studio(tmp_path):
    (tmp_path / "runs").mkdir()
    jobs = JobManager(tmp_path / "runs", start_thread=False)  # runs are queued, never started
    yield SimpleNamespace(jobs=jobs, settings=SimpleNamespace(exports_dir=tmp_path / "exports"))
    jobs.shutdown()


def _adapter_in_run(studio, owner) -> str:
    run_id = studio.jobs.submit("toy", "tests.jobs.toy:count", {"steps": 0}, owner=owner)
    folder = studio.jobs.run_dir(run_id) / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({}))  # names no base model
    return str(folder)


def test_another_owners_adapter_path_is_answered_as_missing(studio):
    a, b = owner_of(new_owner()), owner_of(new_owner())
    path = _adapter_in_run(studio, a)
    cfg = ChatConfig(source=PATH, path=path)
    with pytest.raises(ValueError, match="does not exist"):
        service.engine_for(studio, cfg, owner=b)
    # its owner gets past the check (to the adapter's own complaint: no base model named)
    with pytest.raises(ValueError, match="does not say which base model"):
        service.engine_for(studio, cfg, owner=a)
