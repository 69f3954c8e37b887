"""Models on disk and from the hub, shared by every tab.

One place answers "is this model on disk?" (`local_path`, `require_local`), says how big a hub
model is before it is fetched (`repo_plan`, from the hub's own model info), downloads it as a
background job (`run_download`, a `studio.jobs` job: progress in bytes, speed, Cancel, resume),
keeps the hub token (`TokenStore`: a 0600 file under the studio home, or ``HF_TOKEN``), shows
what the models take on disk and deletes them (huggingface_hub's cache scan), and turns hub
errors into plain sentences (`plain_error`: a gated model names its page and what to do).

No Gradio here and no network on import. The real `huggingface_hub` client does every request;
``HF_ENDPOINT`` and ``HF_HUB_CACHE``/``HF_HOME`` are read when a call is made (tests point
them at a local fake hub and a temporary cache).

Resume: huggingface_hub 1.x downloads each file to a process-unique temporary file and removes
it when the download fails, so a resumed download keeps every file that was complete and fetches
the interrupted one again (within one attempt the client itself resumes after a network error).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.config import format_bytes
from studio.jobconfig import JobConfig, setting
from studio.jobs import ALL

log = logging.getLogger("studio.hub")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_\-.]{8,256}$")
DEFAULT_ENDPOINT = "https://huggingface.co"
DISK_MARGIN = 512 * 1024**2  # keep this much free after a download
JOB_KIND = "models"
_WEIGHTS = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt")
JOB_ENTRY = "studio.hub:run_download"

# Files a model loader never reads: other frameworks' weights, duplicates, assets.
_NEVER = ("original/*", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data",
          "*.ot", "*.tflite", "*.mlmodel", "*.mlpackage/*", "onnx/*", "openvino/*", "coreml/*",
          "*/onnx/*", "*/openvino/*", "flax_model*", "tf_model*", "rust_model*", "*.png",
          "*.jpg", "*.jpeg", "*.gif", "*.webp", ".gitattributes", "*.md")


class HubError(ValueError):
    """Something about a model source or download, in words a user can act on."""


class NotOnDisk(HubError):
    """The model must be downloaded first (on the Models tab)."""


class NotEnoughDisk(HubError):
    """The download would not fit on the disk."""


# ----- where things live ----------------------------------------------------------------------
def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def model_page(repo: str) -> str:
    return f"{endpoint()}/{repo}"


def hf_cache_dir() -> Path:
    """huggingface_hub's cache, as its own variables say (read now, not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def studio_cache_dirs(settings: Any) -> dict[str, Path]:
    """Every cache the studio's models land in: the hub cache most tabs load from, and the
    folders faster-whisper and pyannote are given (under the studio home)."""
    return {"hub": hf_cache_dir(), "whisper": Path(settings.cache_dir) / "whisper",
            "pyannote": Path(settings.cache_dir) / "pyannote"}


def models_dir(home: Path) -> Path:
    return Path(home) / "models"


# ----- the token ------------------------------------------------------------------------------
class TokenStore:
    """The hub token: a file only the owner can read (0600) under the studio home, else
    ``HF_TOKEN``. It is never logged, never shown again, and never written to a run folder: a
    download job reads it here itself."""

    def __init__(self, home: Path):
        self.path = Path(home) / "secrets" / "hf_token"

    def save(self, text: str) -> None:
        token = (text or "").strip()
        if not _TOKEN.match(token):
            # the message never repeats what was typed: it may be a real secret mistyped
            raise HubError("That does not look like a hub access token (letters, digits, - "
                           "and _; they start with hf_). Copy it again from your hub settings.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def stored(self) -> str | None:
        try:
            return self.path.read_text().strip() or None
        except OSError:
            return None

    def get(self) -> str | None:
        return self.stored() or os.environ.get("HF_TOKEN") or None

    def describe(self) -> str:
        if self.stored():
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.path.stat().st_mtime))
            return f"A token is saved in the studio home (since {when}); it is not shown again."
        if os.environ.get("HF_TOKEN"):
            return "Using the token in the HF_TOKEN environment variable."
        return "No token: public models download without one; gated ones need it."


# ----- sources --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """What a user typed or a catalog names: a hub repo (optionally one file of it), a local
    folder or file, or a short name a library resolves itself (``large-v3``, ``yolov8n.pt``)."""

    kind: str  # hub | folder | file | name
    text: str
    repo: str | None = None
    filename: str | None = None


def parse_source(text: str) -> Source:
    """A hub id (``org/name``, or ``org/name:file.gguf`` for one file), a local folder or a
    single file (GGUF, ``.safetensors``); anything else is refused with the reason."""
    t = (text or "").strip()
    if not t:
        raise HubError("Enter a hub id (org/name), a model folder or a model file.")
    if len(t) > 500 or any(c in t for c in "\0\n\r"):
        raise HubError("That model source is not a hub id, folder or file name.")
    p = Path(t).expanduser()
    if t.startswith(("/", "~", ".")) or "\\" in t:
        if p.is_dir():
            return Source("folder", str(p.resolve()))
        if p.is_file():
            return Source("file", str(p.resolve()))
        raise HubError(f"No such model file or folder: {t}")
    repo, sep, filename = t.partition(":")
    if HUB_ID.match(repo) and ".." not in repo:
        if sep:
            if not filename or filename.startswith("/") or ".." in filename.split("/"):
                raise HubError(f"{t!r}: after the ':' give a file of the repo, e.g. "
                               "org/name:model.Q4_K_M.gguf")
            return Source("hub", t, repo=repo, filename=filename)
        if p.exists():  # a relative folder that happens to look like org/name
            return Source("folder" if p.is_dir() else "file", str(p.resolve()))
        return Source("hub", t, repo=repo)
    if p.exists():
        return Source("folder" if p.is_dir() else "file", str(p.resolve()))
    if re.fullmatch(r"[\w.-]{1,64}", t):
        return Source("name", t)
    raise HubError(f"{t!r} is not a hub id (org/name), an existing folder or a file.")


# ----- what a download would fetch --------------------------------------------------------------
@dataclass
class RepoPlan:
    """The files of one hub repo the studio would fetch, with sizes from the hub."""

    repo: str
    revision: str
    files: list[dict[str, Any]]  # {"path", "size"}
    gated: bool = False
    cache_dir: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(int(f.get("size") or 0) for f in self.files)

    def missing(self) -> list[dict[str, Any]]:
        snap = Path(self.cache_dir) / repo_folder(self.repo) / "snapshots" / self.revision
        return [f for f in self.files if not (snap / f["path"]).exists()]

    def missing_bytes(self) -> int:
        return sum(int(f.get("size") or 0) for f in self.missing())


def pick_files(files: list[dict[str, Any]], filename: str | None = None,
               allow: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The files a loader reads: safetensors over ``.bin``, no other frameworks' weights, no
    single-file checkpoints beside a diffusers layout, one GGUF (named) of a GGUF repo."""
    names = {f["path"] for f in files}
    if filename:
        if filename not in names:
            raise HubError(f"{filename} is not a file of this repository.")
        keep = {filename} | {n for n in names if n.endswith(".json") and "/" not in n}
        return [f for f in files if f["path"] in keep]
    if allow:
        pats = list(allow)
        return [f for f in files if any(fnmatch.fnmatch(f["path"], p) for p in pats)]
    out = [f for f in files if not any(fnmatch.fnmatch(f["path"], p) for p in _NEVER)]
    folders_with_st = {str(Path(f["path"]).parent) for f in out
                       if f["path"].endswith(".safetensors")}
    out = [f for f in out if not (f["path"].endswith(".bin")
                                  and str(Path(f["path"]).parent) in folders_with_st)]
    if "model_index.json" in names:  # diffusers: the folders, not the root checkpoints
        out = [f for f in out if "/" in f["path"] or not f["path"].endswith(".safetensors")]
    # precision variants (model.fp32-00001-of-00002.safetensors, unet/*.fp16.safetensors) go
    # when the folder has plain weights of the same format: loaders read the plain ones
    variant = re.compile(r"\.(fp16|fp32|bf16|non_ema|ema)(?=[.-])")
    plain = {(str(Path(f["path"]).parent), Path(f["path"]).suffix) for f in out
             if not variant.search(Path(f["path"]).name) and f["path"].endswith(_WEIGHTS)}
    out = [f for f in out if not (variant.search(Path(f["path"]).name) and
                                  (str(Path(f["path"]).parent), Path(f["path"]).suffix) in plain)]
    ggufs = [f["path"] for f in out if f["path"].endswith(".gguf")]
    if len(ggufs) > 1:
        raise HubError("This repository holds several GGUF files; pick one as "
                       f"org/name:FILE, e.g. {ggufs[0]}.")
    return out


def repo_plan(repo: str, cache_dir: Path, token: str | None = None,
              filename: str | None = None, allow: Iterable[str] | None = None) -> RepoPlan:
    """Ask the hub which files `repo` has and how big they are (one model-info call)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint()).model_info(repo, files_metadata=True,
                                                      token=token or None)
    except Exception as e:  # the hub's errors come in many types: translate them all
        raise plain_error(e, repo, token) from None
    files = [{"path": s.rfilename, "size": int(s.size or 0)} for s in info.siblings or []]
    return RepoPlan(repo=repo, revision=info.sha or "main",
                    files=pick_files(files, filename, allow),
                    gated=bool(getattr(info, "gated", False)), cache_dir=str(cache_dir))


def check_access(plan: RepoPlan, token: str | None) -> None:
    """Ask for the first file's headers: a gated model without access fails here, at the click,
    not minutes later inside the job."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    if not plan.files:
        raise HubError(f"{plan.repo} has no model files the studio can load.")
    url = hf_hub_url(plan.repo, plan.files[0]["path"], revision=plan.revision,
                     endpoint=endpoint())
    try:
        get_hf_file_metadata(url, token=token or None, endpoint=endpoint())
    except Exception as e:
        raise plain_error(e, plan.repo, token) from None


def plain_error(exc: BaseException, repo: str, token: str | None = None) -> HubError:
    """A hub exception as a sentence: gated, not found, bad token, offline, unreachable."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = model_page(repo)
    accept = (f"{repo} is a gated model: open {page}, accept the licence there, then paste a "
              "token here (Models tab → Hub token).")
    if isinstance(exc, GatedRepoError):
        if token:
            return HubError(f"{accept} The saved token has no access yet: the licence must be "
                            "accepted with the account the token belongs to.")
        return HubError(accept)
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{repo}: that revision does not exist on the hub.")
    if isinstance(exc, RepositoryNotFoundError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401 and not token:
            return HubError(f"{repo} was not found, or it is private or gated: check the name at "
                            f"{page}; if it needs access, accept the licence there, then paste a "
                            "token here.")
        return HubError(f"{repo} was not found on the hub (check the spelling at {page}).")
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError("The studio is offline (--offline or HF_HUB_OFFLINE=1): it does not "
                        "contact the hub. Models already on disk still work.")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            return HubError("The hub refused the token (401): paste a valid one here.")
        if status == 403:
            return HubError(f"The token may not read {repo} (403): {accept}")
        return HubError(f"The hub answered {status} for {repo}; try again later.")
    import httpx

    if isinstance(exc, (httpx.ConnectError, httpx.TimeoutException, OSError)):
        return HubError(f"Cannot reach the hub at {endpoint()} ({type(exc).__name__}). Check the "
                        "internet connection; models already on disk still work.")
    return HubError(f"{repo}: {type(exc).__name__}: {exc}")


# ----- on disk --------------------------------------------------------------------------------
def repo_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def _manifest_path(home: Path) -> Path:
    return models_dir(home) / "downloads.json"


def read_manifest(home: Path) -> dict[str, Any]:
    try:
        return json.loads(_manifest_path(home).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def record_download(home: Path, plan: RepoPlan) -> None:
    path = _manifest_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_manifest(home)
    data[f"{plan.cache_dir}|{plan.repo}"] = {
        "repo": plan.repo, "revision": plan.revision, "cache_dir": plan.cache_dir,
        "files": [f["path"] for f in plan.files], "bytes": plan.total_bytes, "at": time.time()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _snapshot(repo: str, cache_dir: Path) -> Path | None:
    storage = Path(cache_dir) / repo_folder(repo)
    ref = storage / "refs" / "main"
    if ref.is_file():
        snap = storage / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = sorted((storage / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) \
        if (storage / "snapshots").is_dir() else []
    return snaps[-1] if snaps else None


def local_path(home: Path, repo: str, cache_dir: Path, filename: str | None = None) -> Path | None:
    """The folder (or file) of `repo` in `cache_dir` if it is completely on disk, else None.
    Complete means: every file the studio's download recorded is there; for a copy fetched
    outside the studio, its snapshot has a config and at least one weights file."""
    snap = _snapshot(repo, cache_dir)
    if snap is None:
        return None
    rec = read_manifest(home).get(f"{cache_dir}|{repo}")
    if rec is not None and (snap.name == rec["revision"]):
        if all((snap / f).exists() for f in rec["files"]):
            return snap / filename if filename else snap
        return None
    if filename:
        return snap / filename if (snap / filename).exists() else None
    names = [p.name for p in snap.rglob("*")]
    if not (any(n.endswith(_WEIGHTS) for n in names) and
            any(n.endswith((".json", ".yaml", ".txt")) for n in names)):
        return None
    for index in snap.rglob("*.index.json"):  # sharded weights: every shard must be there
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            return None
        if not all((index.parent / shard).exists() for shard in shards):
            return None
    return snap


def require_local(studio: Any, text: str, what: str = "This model",
                  size_hint: str = "") -> str:
    """What a tab should load for `text`: local paths and library names unchanged; for a hub
    id that is on disk, its folder in the cache; for one that is not, `NotOnDisk` saying to
    download it on the Models tab (a request never starts a silent multi-GB download)."""
    try:
        src = parse_source(text)
    except HubError:
        return text  # the tab's own loader gives its own message for a bad path
    if src.kind != "hub":
        return text
    found = local_path(studio.settings.home, src.repo, hf_cache_dir(), src.filename)
    if found is not None:
        return str(found)
    size = f" (about {size_hint})" if size_hint else ""
    if getattr(studio.settings, "offline", False):
        raise NotOnDisk(f"{what} ({src.text}) is not on disk{size} and the studio runs "
                        "--offline, so it cannot be downloaded. Start without --offline and "
                        "download it on the Models tab, or choose a model that is on disk there.")
    raise NotOnDisk(f"{what} ({src.text}) is not on disk yet{size}. Open the Models tab and "
                    "click Download (progress, Cancel and resume there), then try again.")


# ----- the saved choice per role ------------------------------------------------------------------
def _choices_path(home: Path) -> Path:
    return models_dir(home) / "choices.json"


def save_choice(home: Path, profile: str, choice: Any) -> None:
    """Remember the model chosen for a role (per profile) under the studio home."""
    from dataclasses import asdict

    path = _choices_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        data = {}
    data.setdefault(profile, {})[choice.role] = asdict(choice)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def apply_saved_choices(home: Path, profile: str, choices: dict[str, Any]) -> dict[str, Any]:
    """The profile's choices with the ones saved on the Models tab in their place."""
    from studio.profiles import ModelChoice

    try:
        saved = json.loads(_choices_path(home).read_text()).get(profile, {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return choices
    out = dict(choices)
    for role, c in saved.items():
        try:
            out[role] = ModelChoice(**c)
        except TypeError:
            log.warning("ignoring a saved model choice for %s that this version cannot read", role)
    return out


def on_disk_choice(studio: Any, choice: Any) -> Any:
    """A profile `ModelChoice` whose hub id is replaced by its folder on disk (same title);
    `NotOnDisk` when it must be downloaded first. Choices without a source pass through."""
    from dataclasses import replace

    if choice is None or not choice.source:
        return choice
    path = require_local(studio, choice.source, choice.title)
    return choice if path == choice.source else replace(choice, source=path)


# ----- disk -----------------------------------------------------------------------------------
def disk_free(path: Path) -> int:
    """Free bytes where `path` is (or would be created)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_disk(need: int, cache_dir: Path, queued: int = 0) -> None:
    """Refuse a download that would not fit, saying how much is missing."""
    free = disk_free(cache_dir) - queued
    if need + DISK_MARGIN > free:
        missing = need + DISK_MARGIN - free
        raise NotEnoughDisk(
            f"Not enough disk space: this download needs {format_bytes(need)}"
            + (f" (downloads already queued need {format_bytes(queued)} more)" if queued else "")
            + f", {format_bytes(max(free, 0))} is free at {cache_dir}, so "
            f"{format_bytes(missing)} is missing (the studio keeps "
            f"{format_bytes(DISK_MARGIN)} free). Delete models below or free some space.")


@dataclass
class CachedModel:
    repo: str
    cache: str  # which studio cache (hub, whisper, pyannote)
    path: str
    size: int
    files: int
    last_accessed: float | None
    revisions: list[str] = field(default_factory=list)


def cache_usage(dirs: dict[str, Path]) -> list[CachedModel]:
    """What every model in the studio's caches takes, from huggingface_hub's cache scan."""
    from huggingface_hub import scan_cache_dir

    out = []
    for name, d in dirs.items():
        if not Path(d).is_dir():
            continue
        try:
            info = scan_cache_dir(d)
        except Exception as e:  # a cache folder in an odd state must not break the page
            log.warning("could not scan %s: %s", d, e)
            continue
        for r in info.repos:
            out.append(CachedModel(repo=r.repo_id, cache=name, path=str(r.repo_path),
                                   size=int(r.size_on_disk), files=int(r.nb_files),
                                   last_accessed=r.last_accessed,
                                   revisions=[x.commit_hash for x in r.revisions]))
    return sorted(out, key=lambda m: -m.size)


def delete_cached(repo: str, dirs: dict[str, Path]) -> int:
    """Delete every revision of `repo` from the studio's caches; returns the bytes freed."""
    from huggingface_hub import scan_cache_dir

    freed, found = 0, False
    for d in dirs.values():
        if not Path(d).is_dir():
            continue
        info = scan_cache_dir(d)
        for r in info.repos:
            if r.repo_id == repo:
                found = True
                strategy = info.delete_revisions(*[x.commit_hash for x in r.revisions])
                freed += strategy.expected_freed_size
                strategy.execute()
                if Path(r.repo_path).exists():  # only partial blobs were left
                    shutil.rmtree(r.repo_path, ignore_errors=True)
    if not found:
        raise HubError(f"{repo} is not in the studio's model caches.")
    return freed


def remove_stale_partials(repo: str, cache_dir: Path, older_than: float = 60.0) -> int:
    """Temporary files a killed download left behind (huggingface_hub cannot reuse them)."""
    blobs = Path(cache_dir) / repo_folder(repo) / "blobs"
    n = 0
    for p in blobs.glob("*.incomplete") if blobs.is_dir() else []:
        if time.time() - p.stat().st_mtime > older_than:
            p.unlink(missing_ok=True)
            n += 1
    return n


# ----- the download job -----------------------------------------------------------------------
@dataclass
class DownloadConfig(JobConfig):
    """One repo's files into one cache. No token in here: config.json lands in the run folder;
    the job reads the token from the studio home (or HF_TOKEN) itself."""

    NAME = "model download"
    repo: str = setting("", "Hub repository")
    revision: str = setting("main", "Revision (a commit hash)")
    files: list = setting([], "Files with sizes")
    cache_dir: str = setting("", "Cache folder")
    home: str = setting("", "Studio home (where the token is kept)")
    role: str = setting("", "Role the model fills")

    def validate(self) -> None:
        if not HUB_ID.match(self.repo):
            raise ValueError(f"not a hub id: {self.repo!r}")
        if not self.files:
            raise ValueError("nothing to download")
        for f in self.files:
            if ".." in str(f.get("path", "")).split("/") or str(f.get("path", "")).startswith("/"):
                raise ValueError(f"bad file name in the download list: {f.get('path')!r}")


class DownloadStopped(Exception):
    """Raised inside huggingface_hub's read loop when Cancel was pressed."""


class _ByteCounter:
    """A tqdm stand-in huggingface_hub calls once per chunk: counts bytes for the progress
    events and stops the transfer when the job is asked to stop."""

    def __init__(self, job: _Progress, **_: Any):
        self.job = job

    def __enter__(self) -> _ByteCounter:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, n: int | float | None = 1) -> None:
        self.job.add(int(n or 0))

    def close(self) -> None:
        pass

    def refresh(self) -> None:
        pass

    def set_postfix_str(self, *_: Any, **__: Any) -> None:
        pass


class _Progress:
    """Bytes done, speed over the last seconds, and throttled progress events."""

    def __init__(self, report: Any, total: int, done: int, n_files: int):
        self.report, self.total, self.done, self.n_files = report, total, done, n_files
        self.file_index, self.file_name = 0, ""
        self._window: list[tuple[float, int]] = [(time.monotonic(), done)]
        self._last_emit = 0.0
        self._last_metric = 0.0
        self.t0 = time.monotonic()

    def speed(self) -> float:
        t1, d1 = self._window[-1]
        t0, d0 = self._window[0]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def add(self, n: int) -> None:
        if self.report.should_stop():
            raise DownloadStopped()
        self.done += n
        now = time.monotonic()
        self._window.append((now, self.done))
        while len(self._window) > 2 and now - self._window[0][0] > 5.0:
            self._window.pop(0)
        self.emit(force=False)

    def emit(self, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last_emit < 0.25:
            return
        self._last_emit = now
        speed = self.speed()
        # done/total in MiB or GiB, so the panel reads "35% 5.6/16 GiB · 40 MiB/s · file 2/4"
        unit, name = (1024**3, "GiB") if self.total >= 1024**3 else (1024**2, "MiB")
        msg = (f"{name} · {format_bytes(speed)}/s · file {self.file_index}/{self.n_files} "
               f"{self.file_name}").rstrip()
        self.report.progress(round(min(self.done, self.total) / unit, 3),
                             round(self.total / unit, 3), msg)
        if now - self._last_metric >= 1.0:
            self._last_metric = now
            self.report.metrics(int(now - self.t0), speed_mib_s=speed / 2**20)


def run_download(config: dict[str, Any], report: Any) -> None:
    """Job entry: fetch the planned files with huggingface_hub, one at a time, into the cache.

    Files already there are skipped (that is the resume); Cancel stops within a chunk."""
    import huggingface_hub.constants as hc
    from huggingface_hub import hf_hub_download

    cfg = DownloadConfig.from_dict(config)
    cache_dir = Path(cfg.cache_dir)
    hc.DOWNLOAD_CHUNK_SIZE = 1024**2  # progress (and Cancel) every MiB, not every 10 MB
    # Plain HTTP, not the Xet transfer: its progress arrives through a native callback that a
    # Cancel cannot interrupt; over HTTP the client itself retries with Range after an error.
    hc.HF_HUB_DISABLE_XET = True
    token = TokenStore(Path(cfg.home)).get() if cfg.home else os.environ.get("HF_TOKEN")
    plan = RepoPlan(cfg.repo, cfg.revision, list(cfg.files), cache_dir=str(cache_dir))
    remove_stale_partials(cfg.repo, cache_dir)
    missing = plan.missing()
    need = sum(int(f.get("size") or 0) for f in missing)
    check_disk(need, cache_dir)
    if cfg.home:  # the file list first: a half-fetched snapshot never counts as on disk
        record_download(Path(cfg.home), plan)
    prog = _Progress(report, plan.total_bytes, plan.total_bytes - need, len(plan.files))
    report.log(f"{cfg.repo}@{cfg.revision[:12]}: {len(plan.files)} files, "
               f"{format_bytes(plan.total_bytes)}; {len(missing)} to fetch "
               f"({format_bytes(need)}) into {cache_dir}")
    prog.emit()
    todo = {f["path"] for f in missing}
    for i, f in enumerate(plan.files, 1):
        prog.file_index, prog.file_name = i, f["path"]
        if f["path"] not in todo:
            continue
        start = prog.done
        try:
            hf_hub_download(cfg.repo, f["path"], revision=cfg.revision, cache_dir=str(cache_dir),
                            token=token or None, endpoint=endpoint(),
                            tqdm_class=lambda **kw: _ByteCounter(prog, **kw))
        except DownloadStopped:
            report.log(f"stopped during {f['path']}; {i - 1} of {len(plan.files)} files kept, "
                       "resume fetches the rest")
            return
        except Exception as e:
            raise plain_error(e, cfg.repo, token) from None
        prog.done = start + int(f.get("size") or 0)  # exact, whatever the chunks added up to
        prog.emit()
        report.log(f"got {f['path']} ({format_bytes(f.get('size'))})")
        if report.should_stop():
            report.log(f"stopped after {f['path']}; resume fetches the rest")
            return
    prog.done = prog.total
    prog.emit()
    report.log(f"{cfg.repo} is on disk: {format_bytes(plan.total_bytes)}")


def queued_download_bytes(jobs: Any) -> int:
    """Bytes the downloads already queued or running will still write (for the disk check)."""
    total = 0
    for v in jobs.queue():
        if v.kind != JOB_KIND:
            continue
        try:
            cfg = json.loads((Path(v.run_dir) / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        size = sum(int(f.get("size") or 0) for f in cfg.get("files", []))
        total += int(size * (1 - (v.fraction or 0)))
    return total


def active_download(jobs: Any, repo: str) -> str | None:
    """The run id of a queued or running download of `repo`, if there is one."""
    for v in jobs.queue():
        if v.kind == JOB_KIND:
            try:
                cfg = json.loads((Path(v.run_dir) / "config.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if cfg.get("repo") == repo:
                return v.id
    return None


def submit_download(studio: Any, plan: RepoPlan, role: str = "", title: str = "",
                    owner: Any = ALL) -> str:
    """Queue the download of `plan` as a background job (after the disk check). The files are
    everyone's once there; the run (Cancel, resume) is `owner`'s."""
    if getattr(studio.settings, "offline", False):
        raise HubError("The studio runs --offline: it never contacts the hub. Start it without "
                       "--offline to download models.")
    running = active_download(studio.jobs, plan.repo)
    if running:
        whose = f"run {running}" if studio.jobs.owns(running, owner) else \
            "started by another session; it is there for everyone once done"
        raise HubError(f"{plan.repo} is already downloading ({whose}).")
    need = plan.missing_bytes()
    check_disk(need, Path(plan.cache_dir), queued=queued_download_bytes(studio.jobs))
    cfg = DownloadConfig(repo=plan.repo, revision=plan.revision, files=plan.files,
                         cache_dir=plan.cache_dir, home=str(studio.settings.home), role=role)
    cfg.validate()
    return studio.jobs.submit(JOB_KIND, JOB_ENTRY, cfg.to_dict(),
                              title=title or f"download {plan.repo}", owner=owner)
