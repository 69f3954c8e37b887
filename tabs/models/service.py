"""Models tab logic (no Gradio): one card per role with its source, download size (from the
hub), VRAM (measured once loaded, estimated before), whether it is on disk and which tabs use
it; the choice per role (saved, used by every tab); downloads as background jobs; the token;
the disk."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from studio import hub
from studio.config import format_bytes
from studio.jobs import ALL
from studio.profiles import ModelChoice
from tabs.models.catalog import (
    CT2_FILES,
    ROLE_TITLES,
    ROLES,
    USED_BY,
    Option,
    full_options,
    whisper_repo,
)

INFO_TTL = 600.0  # seconds a hub answer about sizes is reused
ERROR_TTL = 60.0
QUANTS = ["auto", "nf4", "bf16", "fp16", "fp32", "none"]


@dataclass
class Card:
    """What the page shows for one role."""

    role: str
    role_title: str
    title: str
    source: str
    quantization: str
    kind: str  # hub | folder | file | name | none
    download_bytes: int | None
    size_from: str  # "hub", "disk", "estimate" or ""
    on_disk: bool | None  # None: not something the studio fetches (a library fetches it)
    vram_measured: int | None
    vram_estimate: int | None
    fits: bool
    fit_text: str
    used_by: list[str]
    note: str = ""
    alternatives: list[dict[str, Any]] = field(default_factory=list)


def owner_only(studio: Any, what: str) -> None:
    """With a public link several strangers share the studio: none of them may change the
    models, the token or the disk for everyone (downloads of the chosen models stay open)."""
    if studio.settings.share:
        raise hub.HubError(f"{what} is off while the studio is shared (--share): it would "
                           "change it for every visitor. Do it on a studio started without "
                           "--share; the choice is kept.")


# ----- options ------------------------------------------------------------------------------------
def catalog(studio: Any) -> dict[str, list[Option]]:
    """The curated options, the profile's own default first (built once per studio: the
    Whisper entries probe the engine)."""
    return studio.service("models_catalog", _build_catalog)


def _build_catalog(studio: Any) -> dict[str, list[Option]]:
    from studio.profiles import profile_models

    out = full_options(studio.probe.device)
    for role, choice in profile_models(studio.profile).items():
        opts = out.setdefault(role, [])
        if choice.source and not any(o.source == choice.source for o in opts):
            opts.insert(0, custom_option(role, choice.source, choice.quantization,
                                         f"{choice.title} (profile default)", choice.gguf_file))
    return out


def option_for_choice(studio: Any, role: str, choice: ModelChoice | None) -> Option | None:
    """The catalog entry a profile choice matches, or one built from what was typed."""
    if choice is None or choice.source is None:
        return None
    for opt in catalog(studio).get(role, []):
        if opt.source == choice.source:
            return replace(opt, title=choice.title, quantization=choice.quantization,
                           gguf_file=choice.gguf_file)
    return custom_option(role, choice.source, choice.quantization, choice.title,
                         choice.gguf_file)


def custom_option(role: str, text: str, quantization: str = "auto", title: str = "",
                  gguf_file: str | None = None) -> Option:
    """An option for any hub id, local folder or single file the user typed."""
    src = hub.parse_source(text)
    if src.kind == "hub":
        return Option(role, src.text, title or src.repo, quantization, gguf_file=gguf_file,
                      download=src.repo)
    if src.kind == "name" and role == "whisper":
        return Option(role, src.text, title or f"Whisper {src.text}", quantization,
                      download=whisper_repo(src.text), cache="whisper", allow=CT2_FILES)
    return Option(role, src.text, title or Path(src.text).name, quantization,
                  gguf_file=gguf_file)


def _split(opt: Option) -> tuple[str | None, str | None]:
    """(repo, single file) of an option's download."""
    if not opt.download:
        return None, None
    if opt.source.startswith(opt.download + ":"):
        return opt.download, opt.source.split(":", 1)[1]
    return opt.download, None


def cache_dir(studio: Any, opt: Option) -> Path:
    return hub.studio_cache_dirs(studio.settings)[opt.cache]


def on_disk(studio: Any, opt: Option) -> bool | None:
    repo, filename = _split(opt)
    if repo is None:
        try:
            src = hub.parse_source(opt.source)
        except hub.HubError:
            return False
        return True if src.kind in ("folder", "file") else None
    return hub.local_path(studio.settings.home, repo, cache_dir(studio, opt), filename) \
        is not None


# ----- sizes from the hub (cached) ----------------------------------------------------------------
class InfoCache:
    """Hub answers about repos, reused for a while (the page refreshes often)."""

    def __init__(self) -> None:
        self._data: dict[tuple, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any | None:
        with self._lock:
            hit = self._data.get(key)
        if hit is None:
            return None
        t, value = hit
        ttl = ERROR_TTL if isinstance(value, hub.HubError) else INFO_TTL
        return value if time.monotonic() - t < ttl else None

    def put(self, key: tuple, value: Any) -> None:
        with self._lock:
            self._data[key] = (time.monotonic(), value)


def _info_cache(studio: Any) -> InfoCache:
    return studio.service("models_info_cache", lambda s: InfoCache())


def plan_for(studio: Any, opt: Option, fetch: bool = True) -> hub.RepoPlan | None:
    """The hub's file list and sizes for `opt` (None offline, or when not asked to fetch and
    nothing is cached). Raises HubError with the plain reason when the hub says no."""
    repo, filename = _split(opt)
    if repo is None or studio.settings.offline:
        return None
    key = (repo, filename, opt.allow, opt.cache)
    cached = _info_cache(studio).get(key)
    if cached is None and fetch:
        try:
            cached = hub.repo_plan(repo, cache_dir(studio, opt), token(studio).get(), filename,
                                   opt.allow or None)
        except hub.HubError as e:
            cached = e
        _info_cache(studio).put(key, cached)
    if isinstance(cached, hub.HubError):
        raise cached
    return cached


# ----- VRAM ---------------------------------------------------------------------------------------
def _measured_path(studio: Any) -> Path:
    return hub.models_dir(studio.settings.home) / "measured.json"


def measured_vram(studio: Any, opt: Option) -> int | None:
    """The model manager's measured size of this model, from the ledger now or the last time it
    was loaded (kept under the studio home)."""
    import json

    path = _measured_path(studio)
    try:
        seen = json.loads(path.read_text())
    except (OSError, ValueError):
        seen = {}
    name = Path(opt.source).name
    now = None
    for r in studio.models.loaded():
        if r.state == "reserved" or not r.size:
            continue
        if r.title == opt.title or (len(name) > 3 and (name in r.key or name in r.title)):
            now = max(now or 0, int(r.size))
    if now and seen.get(opt.source) != now:
        seen[opt.source] = now
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(seen, indent=1))
    return now or seen.get(opt.source)


def vram_estimate(studio: Any, opt: Option, download_bytes: int | None) -> int | None:
    """Bytes the model should take once loaded: the catalog's GPU figure, or from the weights'
    size (4-bit NF4 keeps about a third of bf16; a CPU loads float32, twice bf16)."""
    cpu = studio.probe.device != "cuda"
    if not cpu and opt.vram:
        return opt.vram
    if not download_bytes:
        return opt.vram or None
    if cpu:
        return int(download_bytes * (2 if opt.quantization in ("nf4", "bf16", "fp16", "auto")
                                     and opt.role in ("chat", "qlora_base", "vlm") else 1))
    if opt.quantization in ("nf4", "auto") and opt.role in ("chat", "qlora_base", "vlm"):
        return int(download_bytes * 0.36)
    return int(download_bytes)


def fit_text(studio: Any, vram: int | None) -> tuple[bool, str]:
    """Will it fit? The model manager's own test: the whole budget, idle models evicted."""
    budget = studio.models.budget
    where = "" if studio.probe.device == "cuda" else " RAM"
    if not vram:
        return True, "measured when loaded"
    pct = 100 * vram / budget if budget else 0
    if vram > budget:
        return False, f"~{format_bytes(vram)}: does NOT fit {format_bytes(budget)}{where}"
    return True, f"~{format_bytes(vram)} of {format_bytes(budget)}{where} ({pct:.0f}%)"


# ----- cards --------------------------------------------------------------------------------------
def _size(studio: Any, opt: Option, fetch: bool) -> tuple[int | None, str, str]:
    """(bytes, where the figure comes from, note)."""
    try:
        plan = plan_for(studio, opt, fetch=fetch)
    except hub.HubError as e:
        return (opt.size_hint or None), ("estimate" if opt.size_hint else ""), str(e)
    if plan is not None:
        return plan.total_bytes, "hub", ""
    return (opt.size_hint or None), ("estimate" if opt.size_hint else ""), ""


def card_for(studio: Any, role: str, fetch: bool = True) -> Card:
    choice = studio.choices.get(role)
    opt = option_for_choice(studio, role, choice)
    if opt is None:
        why = choice.note if choice is not None else "this profile has no model for it"
        return Card(role, ROLE_TITLES.get(role, role), choice.title if choice else "–", "",
                    "", "none", None, "", False, None, None, True, "", USED_BY.get(role, []),
                    note=why, alternatives=alternatives(studio, role))
    kind, missing = "missing", ""
    try:
        kind = hub.parse_source(opt.source).kind
    except hub.HubError as e:  # e.g. a chosen folder that was deleted since
        missing = str(e)
    size, size_from, note = _size(studio, opt, fetch)
    note = missing or note
    present = on_disk(studio, opt)
    if kind in ("folder", "file"):
        size, size_from = _local_size(opt.source), "disk"
    measured = measured_vram(studio, opt)
    estimate = vram_estimate(studio, opt, size)
    fits, text = fit_text(studio, measured or estimate)
    if measured:
        text = text.replace("~", "") + " (measured)"
    return Card(role, ROLE_TITLES.get(role, role), opt.title, opt.source, opt.quantization,
                kind, size, size_from, present, measured, estimate, fits, text,
                USED_BY.get(role, []), note=note or opt.note,
                alternatives=alternatives(studio, role))


def _local_size(path: str, limit: int = 5000) -> int:
    """Bytes of a local model file or folder (the first `limit` entries: a folder typed by
    mistake, such as a home folder, must not be walked on every refresh)."""
    from itertools import islice

    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in islice(p.rglob("*"), limit) if f.is_file())


def alternatives(studio: Any, role: str) -> list[dict[str, Any]]:
    """The curated options for a role with sizes and their cost on this budget (offline: only
    the ones on disk, and no hub call)."""
    out = []
    for opt in catalog(studio).get(role, []):
        present = on_disk(studio, opt)
        if studio.settings.offline and present is not True:
            continue
        size, size_from, _ = _size(studio, opt, fetch=False)
        if present and not opt.download:  # a local folder or file: its size on disk
            size, size_from = _local_size(opt.source), "disk"
        vram = measured_vram(studio, opt) or vram_estimate(studio, opt, size)
        fits, text = fit_text(studio, vram)
        out.append({"source": opt.source, "title": opt.title, "quantization": opt.quantization,
                    "download_bytes": size, "size_from": size_from, "on_disk": present,
                    "fits": fits, "fit_text": text, "note": opt.note})
    return out


def cards(studio: Any, fetch: bool = True) -> list[Card]:
    return [card_for(studio, role, fetch) for role in ROLES if role in studio.choices
            or role in catalog(studio)]


def card_rows(cards_: list[Card]) -> list[list[str]]:
    rows = []
    for c in cards_:
        size = format_bytes(c.download_bytes) if c.download_bytes else "–"
        if c.size_from == "estimate":
            size = f"~{size}"
        disk = {True: "✅ on disk", False: "⬇️ not on disk", None: "fetched by its library"}[
            c.on_disk] if c.kind != "none" else "no model chosen"
        source = c.source or "–"
        if c.kind in ("folder", "file"):  # the end of a long local path is what tells it apart
            source = "…/" + "/".join(Path(c.source).parts[-2:])
        rows.append([c.role_title, c.title, disk, size, c.fit_text, ", ".join(c.used_by),
                     source])
    return rows


CARD_HEADERS = ["role", "model", "on disk", "size", "VRAM on this budget", "used by", "source"]


def cards_html(cards_: list[Card]) -> str:
    """The cards as a plain HTML table (a Dataframe re-measured every refresh slowed the whole
    page down)."""
    import html

    cell = "style='padding:4px 8px;border-bottom:1px solid #8884;text-align:left'"
    head = "".join(f"<th {cell}>{h}</th>" for h in CARD_HEADERS)
    body = "".join("<tr>" + "".join(f"<td {cell}>{html.escape(str(v))}</td>" for v in row)
                   + "</tr>" for row in card_rows(cards_))
    return (f"<table class='studio-models' style='width:100%;border-collapse:collapse'>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def card_dicts(cards_: list[Card]) -> list[dict[str, Any]]:
    return [asdict(c) for c in cards_]


def option_label(alt: dict[str, Any]) -> str:
    size = format_bytes(alt["download_bytes"]) if alt["download_bytes"] else "size from hub"
    if alt["size_from"] == "estimate":
        size = f"~{size}"
    mark = "✅ " if alt["on_disk"] else ""
    warn = "" if alt["fits"] else " ⚠️"
    return f"{mark}{alt['title']} · {size} download · {alt['fit_text']}{warn}"


# ----- choosing -----------------------------------------------------------------------------------
def choose(studio: Any, role: str, text: str, quantization: str = "auto") -> str:
    """Make `text` (a curated option's source, or any hub id / folder / file) the model of
    `role`; saved under the studio home and used by every tab from their next load."""
    owner_only(studio, "Changing a model")
    if role not in ROLES:
        raise hub.HubError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if quantization not in QUANTS:
        raise hub.HubError(f"quantization must be one of {', '.join(QUANTS)}")
    text = (text or "").strip()
    opt = next((o for o in catalog(studio).get(role, []) if o.source == text), None)
    if opt is None:
        opt = custom_option(role, text, quantization)
    elif quantization != "auto":
        opt = replace(opt, quantization=quantization)
    if studio.settings.offline and on_disk(studio, opt) is False:
        raise hub.HubError(f"{opt.title} is not on disk and the studio runs --offline; choose "
                           "one that is on disk.")
    gguf = opt.gguf_file
    src = hub.parse_source(opt.source)
    if src.kind == "file" and src.text.lower().endswith(".gguf"):
        gguf = None  # the engine takes a .gguf path directly
    quant = "gguf" if (gguf or opt.source.lower().endswith(".gguf")) else opt.quantization
    choice = ModelChoice(role, opt.source, opt.title, quant, gguf_file=gguf, note=opt.note)
    hub.save_choice(studio.settings.home, studio.profile, choice)
    studio.choices[role] = choice
    card = card_for(studio, role, fetch=True)
    disk = ("it is on disk" if card.on_disk else "it is not on disk yet: click Download"
            if card.on_disk is False else "its library fetches it on first use")
    return (f"{ROLE_TITLES[role]} is now **{opt.title}** ({opt.source}); {disk}. "
            f"VRAM: {card.fit_text}. Tabs use it from their next model load.")


# ----- downloading --------------------------------------------------------------------------------
def token(studio: Any) -> hub.TokenStore:
    return hub.TokenStore(studio.settings.home)


def download(studio: Any, role: str, text: str = "",
             quantization: str = "auto", owner: Any = ALL) -> tuple[str | None, str]:
    """Check, then queue the download of the role's model: (run id or None, message). With
    `text` (an option picked or typed that is not the current one) it is chosen first. The
    download run is `owner`'s (``studio.sessions.owner_of``); the files are everyone's.

    Order of checks: offline, something to fetch, will it fit the VRAM budget (before, not
    after, the download), access (gated / token), disk space."""
    if role not in ROLES:
        raise hub.HubError(f"unknown role {role!r}")
    current = studio.choices.get(role)
    if (text or "").strip() and (current is None or text.strip() != current.source):
        choose(studio, role, text, quantization)
    if studio.settings.offline:
        raise hub.HubError("The studio runs --offline: it never contacts the hub. Start it "
                           "without --offline to download models.")
    opt = option_for_choice(studio, role, studio.choices.get(role))
    if opt is None:
        raise hub.HubError(f"{ROLE_TITLES[role]} has no model chosen: pick one first.")
    repo, _ = _split(opt)
    if repo is None:
        if on_disk(studio, opt):
            kind = Path(opt.source).suffix or "folder"
            return None, f"{opt.title} is a local {kind}: nothing to download."
        why = opt.note or "its library fetches it on first use"
        raise hub.HubError(f"{opt.title} is not on the hub: {why}.")
    plan = plan_for(studio, opt, fetch=True)
    fits, text = fit_text(studio, measured_vram(studio, opt) or
                          vram_estimate(studio, opt, plan.total_bytes))
    if not fits:
        smaller = [a["title"] for a in alternatives(studio, role) if a["fits"]]
        raise hub.HubError(f"{opt.title} would not fit once loaded ({text}), so it is not "
                           "downloaded. " + (f"Choose a smaller one: {', '.join(smaller)}."
                                             if smaller else "Choose a smaller model."))
    hub.check_access(plan, token(studio).get())
    if not plan.missing():
        hub.record_download(studio.settings.home, plan)
        return None, f"{opt.title} is already on disk ({format_bytes(plan.total_bytes)})."
    run_id = hub.submit_download(studio, plan, role=role, title=f"download {opt.title}",
                                 owner=owner)
    queued = len([v for v in studio.jobs.queue() if v.id != run_id])
    wait = f"; it starts after the {queued} job(s) ahead of it" if queued else ""
    return run_id, (f"Downloading {opt.title}: {format_bytes(plan.missing_bytes())} "
                    f"({len(plan.missing())} files) into {plan.cache_dir}{wait}.")


def save_token(studio: Any, text: str) -> str:
    owner_only(studio, "Saving a token")
    token(studio).save(text)
    _info_cache(studio)._data.clear()  # gated answers change with a token
    return "Token saved (readable only by you, under the studio home). It is not shown again."


def forget_token(studio: Any) -> str:
    owner_only(studio, "Removing the token")
    token(studio).clear()
    _info_cache(studio)._data.clear()
    return token(studio).describe()


# ----- disk ---------------------------------------------------------------------------------------
def disk_rows(studio: Any) -> tuple[list[list[str]], str]:
    dirs = hub.studio_cache_dirs(studio.settings)
    models = hub.cache_usage(dirs)
    rows = [[m.repo, m.cache, format_bytes(m.size), str(m.files),
             time.strftime("%Y-%m-%d %H:%M", time.localtime(m.last_accessed))
             if m.last_accessed else "–"] for m in models]
    total = sum(m.size for m in models)
    free = hub.disk_free(dirs["hub"])
    return rows, (f"The studio's models take **{format_bytes(total)}** on disk "
                  f"({len(models)} repositories); {format_bytes(free)} free at {dirs['hub']}.")


def delete(studio: Any, repo: str) -> str:
    owner_only(studio, "Deleting a model")
    repo = (repo or "").strip()
    if not hub.HUB_ID.match(repo):
        raise hub.HubError("Pick a model from the disk list to delete.")
    if hub.active_download(studio.jobs, repo):
        raise hub.HubError(f"{repo} is downloading: cancel the download first.")
    freed = hub.delete_cached(repo, hub.studio_cache_dirs(studio.settings))
    return f"Deleted {repo}: {format_bytes(freed)} freed."
