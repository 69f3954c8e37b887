"""A small model hub on 127.0.0.1 for tests: the routes huggingface_hub calls.

- ``GET /api/models/{repo}[/revision/{rev}]`` model info (``?blobs=True`` adds sizes)
- ``HEAD|GET /{repo}/resolve/{rev}/{path}`` file metadata and content, with ``ETag``,
  ``X-Repo-Commit``, ``Content-Length`` and ``Range`` support
- gated repos answer 401 without a token and 403 with a wrong one (``X-Error-Code: GatedRepo``),
  as the real hub does; slow repos send their bytes at a set rate (Cancel/resume tests); a repo
  may claim sizes it never serves (the "too large for the disk" case).

Point ``HF_ENDPOINT`` at ``hub.url`` and the real client downloads from it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class FakeRepo:
    repo: str
    files: dict[str, bytes]
    gated: bool = False
    token: str | None = None  # the one token with access (gated repos)
    bytes_per_second: float | None = None  # slow route
    claimed_sizes: dict[str, int] = field(default_factory=dict)  # sizes the info claims
    sha: str = ""

    def __post_init__(self):
        if not self.sha:
            self.sha = hashlib.sha1(self.repo.encode()).hexdigest()

    def size(self, path: str) -> int:
        return self.claimed_sizes.get(path, len(self.files.get(path, b"")))


class FakeHub:
    def __init__(self):
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, auth header
        self.bytes_sent: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo: FakeRepo) -> FakeRepo:
        self.repos[repo.repo] = repo
        return repo

    def add_folder(self, repo: str, folder: Path, **kw) -> FakeRepo:
        files = {str(p.relative_to(folder)): p.read_bytes()
                 for p in sorted(Path(folder).rglob("*")) if p.is_file()}
        return self.add(FakeRepo(repo, files, **kw))

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def auth_headers_seen(self) -> list[str]:
        return [a for _, _, a in self.requests if a]

    # ----- the HTTP side ------------------------------------------------------------------
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None,
                      head: bool = False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head and body:
                    self.wfile.write(body)

            def _json(self, code: int, data, headers: dict | None = None):
                self._send(code, json.dumps(data).encode(),
                           {"Content-Type": "application/json", **(headers or {})})

            def _denied(self, repo: FakeRepo, head: bool) -> bool:
                if not repo.gated:
                    return False
                auth = self.headers.get("Authorization", "")
                if auth == f"Bearer {repo.token}":
                    return False
                code = 401 if not auth else 403
                msg = (f"Access to model {repo.repo} is restricted. You must have access to it "
                       "and be authenticated to access it. Please log in.")
                self._send(code, b"" if head else json.dumps({"error": msg}).encode(),
                           {"X-Error-Code": "GatedRepo", "X-Error-Message": msg,
                            "Content-Type": "application/json"}, head=head)
                return True

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

            def _route(self, head: bool):
                path = self.path.split("?")[0]
                hub.requests.append((self.command, path, self.headers.get("Authorization")))
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
                if m:
                    return self._info(m.group(1))
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    return self._file(m.group(1), m.group(3), head)
                self._json(404, {"error": "not found"})

            def _not_found(self):
                msg = "Repository not found"
                self._json(401, {"error": msg}, {"X-Error-Code": "RepoNotFound",
                                                 "X-Error-Message": msg})

            def _info(self, name: str):
                repo = hub.repos.get(name)
                if repo is None:
                    return self._not_found()
                siblings = []
                for p in repo.files.keys() | repo.claimed_sizes.keys():
                    sib = {"rfilename": p, "size": repo.size(p),
                           "blobId": hashlib.sha1(repo.files.get(p, p.encode())).hexdigest()}
                    siblings.append(sib)
                self._json(200, {"id": repo.repo, "modelId": repo.repo, "sha": repo.sha,
                                 "private": False, "gated": "manual" if repo.gated else False,
                                 "siblings": sorted(siblings, key=lambda s: s["rfilename"])})

            def _file(self, name: str, fpath: str, head: bool):
                repo = hub.repos.get(name)
                if repo is None:
                    return self._not_found()
                if self._denied(repo, head):
                    return
                if fpath not in repo.files:
                    msg = "Entry not found"
                    return self._json(404, {"error": msg}, {"X-Error-Code": "EntryNotFound",
                                                            "X-Error-Message": msg})
                data = repo.files[fpath]
                etag = hashlib.sha256(data).hexdigest()
                headers = {"ETag": f'"{etag}"', "X-Repo-Commit": repo.sha,
                           "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
                start = 0
                rng = self.headers.get("Range")
                if rng and not head:
                    start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                body = data[start:]
                headers["Content-Length"] = len(body)
                code = 206 if start else 200
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, str(v))
                self.end_headers()
                if head:
                    return
                step = 64 * 1024
                try:
                    for i in range(0, len(body), step):
                        chunk = body[i:i + step]
                        self.wfile.write(chunk)
                        hub.bytes_sent[f"{name}/{fpath}"] = \
                            hub.bytes_sent.get(f"{name}/{fpath}", 0) + len(chunk)
                        if repo.bytes_per_second:
                            time.sleep(len(chunk) / repo.bytes_per_second)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


def point_client_at(mp, hub: FakeHub, cache: Path) -> None:
    """Aim the real huggingface_hub client (this process and the job processes it starts) at
    `hub`, with `cache` as its cache, online, without a token from the environment.
    `mp` is a pytest MonkeyPatch (undone after the test)."""
    import huggingface_hub.constants as hc

    mp.setenv("HF_ENDPOINT", hub.url)
    mp.setenv("HF_HUB_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "0")  # the job processes read it when they start
    mp.setenv("HF_HUB_DISABLE_XET", "1")
    mp.delenv("HF_TOKEN", raising=False)
    mp.setattr(hc, "HF_HUB_OFFLINE", False)  # this process read the tests' offline setting
