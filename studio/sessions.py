"""The concurrency model: a shared link is several strangers using one card at once.

Gradio runs handlers in a thread pool, so every choice below is about what two sessions
running at the same moment can do to each other. They may share memory and the card; they
never see, stop or change each other's work.

- **Shared, read-mostly objects.** One `ModelManager` owns every model; each model is loaded
  once and used by all sessions. A request never leaves a setting of its own on a shared
  object for the next request to find: sampling settings, a chat's PEFT adapter, SD LoRAs and
  strengths, scheduler and VAE slicing/tiling are applied by the request while it holds the
  model exclusively (``LoadedLLM.lock``; `exclusive` for an SD pipeline) and every request
  sets all of them again. Engines that carry a per-request setting (an adapter) are made per
  request; they are cheap, the weights are the manager's.
- **The card.** Handlers that compute on the device carry ``concurrency_id="gpu"`` and run at
  most `GPU_CONCURRENCY` at a time (`studio.app.configure_queue`, the one place the queue is
  set up, used by ``launch.py`` and by the app-level tests). Two, not one: while one request
  computes, the next tokenizes, decodes audio or saves its PNGs, and a second model can
  stream; the model locks keep one request per model. Everything else (status, Stop, job
  views, Unload) stays off that queue and answers at once.
- **The model manager never blocks the page.** It loads outside its lock: a "loading" entry
  that other requests for the same model wait on, while status, Unload, Free all and other
  models answer at once. A request waiting for memory held by a job or another request says
  so (``ModelManager.on_wait``, a toast for the waiting session, and the decisions list).
  First use registers through ``ModelManager.ensure(key, make_spec)``, under the lock.
- **Per-session state** (chat history, the selected run, a Stop flag) lives in the page's
  components or is keyed by the Gradio session (``request.session_hash``). `StopFlags` is
  the one registry of Stop flags for every tab that streams: a Stop reaches the caller's own
  running request in that tab and nothing else; a call without a session (a bare HTTP
  ``/run/...`` call) gets a flag no one else can reach, and its Stop does nothing.
- **Ownership of work.** Runs (and what they make: adapters, LoRAs, weights, fine-tuned
  models, checkpoints, knowledge bases, evaluations) belong to whoever started them. A
  browser's owner is a random secret it keeps in one `gr.BrowserState`
  (`OWNER_STORAGE_KEY`, `studio.ui.widgets.owner_state`), so it survives a reload and a
  restart; on the server only ``owner_of(secret)``, a digest, is stored or compared. A caller
  without a secret (a `gradio_client` script, which sends none) owns its work by its Gradio
  session: one `Client` is one owner. Every listing is filtered by owner
  (``JobManager.list_runs(owner=...)``), and every handler that takes a run id from the
  request checks it (``JobManager.check``): another owner's run is answered exactly like a
  missing one, so ids of others are never confirmed. Ownerless runs (made by benches, tests,
  or before owners existed) are shared and read-only. The job queue itself stays whole (one
  card, one order), but another session's run shows there only as "another session's run".
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

GPU_CONCURRENCY = 2  # GPU-bound handlers running at once (see the module docstring)
OWNER_STORAGE_KEY = "studio-chat-owner"  # the browser's secret (Chat's key: saved chats stay)
_SECRET_RE = re.compile(r"[0-9a-f]{32}")


def new_owner() -> str:
    """A fresh browser secret: 32 hex characters."""
    return secrets.token_hex(16)


def valid_secret(secret: Any) -> bool:
    return isinstance(secret, str) and bool(_SECRET_RE.fullmatch(secret))


def owner_of(secret: Any, request: Any = None) -> str | None:
    """The owner id of a caller: ``"b" + digest`` of a valid browser secret; else ``"s" +
    digest`` of its Gradio session (a script's `Client` keeps one); None with neither.

    The prefixes keep a browser and a session apart; the secret itself is never stored."""
    if valid_secret(secret):
        return "b" + hashlib.sha256(secret.encode()).hexdigest()[:31]
    session = session_of(request)
    if session:
        return "s" + hashlib.sha256(session.encode()).hexdigest()[:31]
    return None


def session_of(request: Any) -> str | None:
    """The Gradio session of a request (``gr.Request.session_hash``), None when there is none.

    Takes the request as a plain object so logic modules stay free of Gradio."""
    session = getattr(request, "session_hash", None)
    return str(session) if session else None


class StopFlags:
    """Stop flags keyed by (what, session): the Stop button sets the flag of its own session's
    running request in its own tab; a request with no session cannot be stopped from outside
    and a Stop with no session stops nothing."""

    def __init__(self) -> None:
        self._flags: dict[tuple[str, str], threading.Event] = {}
        self._lock = threading.Lock()

    @contextmanager
    def running(self, what: str, session: str | None) -> Iterator[threading.Event]:
        """A fresh flag for one request, registered while the ``with`` block runs."""
        flag = threading.Event()
        key = (what, session) if session else None
        if key is not None:
            with self._lock:
                self._flags[key] = flag
        try:
            yield flag
        finally:
            if key is not None:
                with self._lock:
                    if self._flags.get(key) is flag:  # a newer request of the session may
                        del self._flags[key]  # have taken the slot: leave that one alone

    def stop(self, what: str, session: str | None) -> bool:
        """Set the flag of `session`'s running request in `what`; False when there is none."""
        if not session:
            return False
        with self._lock:
            flag = self._flags.get((what, session))
        if flag is None:
            return False
        flag.set()
        return True

    def is_running(self, what: str, session: str | None) -> bool:
        with self._lock:
            return bool(session) and (what, session) in self._flags


@contextmanager
def exclusive(obj: Any) -> Iterator[Any]:
    """Hold `obj` (a shared pipeline) for one request: per-request settings applied inside
    the block are the ones its call sees. The lock lives on the object, so it goes with it
    when the manager evicts the model."""
    lock = getattr(obj, "_studio_exclusive", None)
    if lock is None:
        with _attach_lock:
            lock = getattr(obj, "_studio_exclusive", None)
            if lock is None:
                lock = threading.RLock()
                obj._studio_exclusive = lock
    with lock:
        yield obj


_attach_lock = threading.Lock()


# ----- saved conversations ------------------------------------------------------------------
class ConversationStore:
    """Chats saved per owner under the studio home: ``<root>/<owner digest>/<id>.json``.

    The owner is a random secret the browser keeps (a `gr.BrowserState`), so a person's chats
    survive a reload while another browser can neither list nor open them: folders are named by
    a digest of the secret, never by the secret, and ids are ours (hex), never paths from the
    request."""

    def __init__(self, root: Any) -> None:
        from pathlib import Path

        self.root = Path(root)

    @staticmethod
    def new_owner() -> str:
        return new_owner()

    @staticmethod
    def new_id() -> str:
        import secrets
        import time

        return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)

    def _folder(self, owner: str | None) -> Any:
        import hashlib
        import re

        if not owner or not re.fullmatch(r"[0-9a-f]{32}", str(owner)):
            raise ValueError("this browser has no chat store yet; reload the page")
        return self.root / hashlib.sha256(owner.encode()).hexdigest()[:32]

    def _path(self, owner: str | None, conv_id: str) -> Any:
        import re

        if not re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", str(conv_id or "")):
            raise ValueError(f"no saved chat {conv_id!r}")
        return self._folder(owner) / f"{conv_id}.json"

    def save(self, owner: str | None, conv_id: str, messages: list[dict],
             title: str = "") -> None:
        import json
        import os

        path = self._path(owner, conv_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not title:
            first = next((_text_of(m.get("content")) for m in messages
                          if m.get("role") == "user"), "") or "chat"
            title = " ".join(first.split())[:60] or "chat"
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"title": title, "messages": messages}, default=str))
        os.replace(tmp, path)

    def load(self, owner: str | None, conv_id: str) -> list[dict]:
        import json

        path = self._path(owner, conv_id)
        if not path.is_file():
            raise ValueError(f"no saved chat {conv_id!r}")
        return json.loads(path.read_text())["messages"]

    def delete(self, owner: str | None, conv_id: str) -> bool:
        path = self._path(owner, conv_id)
        if path.is_file():
            path.unlink()
            return True
        return False

    def list(self, owner: str | None) -> list[tuple[str, str]]:
        """(label, id) of the owner's chats, newest first; none for an unknown owner."""
        import json

        try:
            folder = self._folder(owner)
        except ValueError:
            return []
        out = []
        for p in sorted(folder.glob("*.json"), reverse=True):
            try:
                title = json.loads(p.read_text()).get("title") or "chat"
            except (OSError, ValueError):
                continue
            stamp = p.stem[4:8] + " " + p.stem[9:11] + ":" + p.stem[11:13]
            out.append((f"{title} · {stamp[:2]}-{stamp[2:]}", p.stem))
        return out


def _text_of(content: Any) -> str:
    """A message's text: a string, or Gradio's list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""
