"""Answers grounded in retrieved passages, streamed from the shared LLM engine, with numbered
citations ([1], [2]...) that point at the passages shown beside the chat.

- Nothing relevant found: the answer is "I don't know from your notes." and the model is not
  asked (a small model would otherwise answer from its own memory).
- A reply with no valid citation has no citations: the passage it shares most words with is
  offered as a *related passage* (``related``), shown apart from citations and never counted
  as one in the evaluation (a wrong answer must not look sourced).
- With tools on, the model may call ``search_notes(query)`` and ``read_source(path, start,
  end)``; passages found by its searches join the numbered list. A model whose template has no
  tool format (SmolLM2) gets a clear notice and a normal retrieved answer instead.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tabs.rag.config import IDK, AnswerConfig
from tabs.rag.lexical import split_words
from tabs.rag.retrieval import Hit, SearchResult

SYSTEM = (
    "You answer the user's questions using only their notes, given as numbered passages. "
    "Answer briefly, in one to three sentences, and cite the passages you used with their "
    "numbers in square brackets, like [1]. If the passages do not contain the answer, reply "
    f"exactly: {IDK}"
)
SYSTEM_TOOLS = (
    "You answer the user's questions from their notes and code. Call search_notes to find "
    "passages, and read_source to read more lines of a file. Cite passages by their numbers in "
    f"square brackets, like [1]. If the notes do not contain the answer, reply exactly: {IDK}"
)
# The lines the tab writes under an answer (tabs.rag.ui): cut from the history the model sees.
SOURCES_FOOTER = "\n\n**Sources:**"
RELATED_FOOTER = "\n\n*No passage cited: check this answer.*"
FOOTERS = (SOURCES_FOOTER, RELATED_FOOTER)
_CITE = re.compile(r"\[(\d{1,2})\]")
_LINKED = re.compile(r"\[\[(\d{1,2})\]\]\(#rag-src-\d+\)")
_STOP = frozenset("the a an and or of to in on for is are was were be it this that with as by at "
                  "from what which who how when where why does do did your you my our their "
                  "i we they he she its not no yes can will would should".split())


@dataclass
class Answer:
    text: str
    hits: list[Hit]  # the numbered passages: hits[n-1] is [n]
    citations: list[int] = field(default_factory=list)  # the numbers the text cites
    related: list[int] = field(default_factory=list)  # word-overlap matches, not citations
    idk: bool = False
    notices: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def cited_hits(self) -> list[Hit]:
        return [self.hits[n - 1] for n in self.citations if 0 < n <= len(self.hits)]

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "citations": self.citations, "related": self.related,
                "idk": self.idk, "notices": self.notices, "tool_calls": self.tool_calls,
                "sources": [dict(h.as_dict(), n=i) for i, h in enumerate(self.hits, 1)]}


@dataclass
class AnswerEvent:
    """``sources`` (passages found), ``text`` (a delta), ``tool_call``, ``notice``, ``done``."""

    kind: str
    text: str = ""
    hits: list[Hit] = field(default_factory=list)
    tool_call: Any = None
    answer: Answer | None = None


# ----- prompt ----------------------------------------------------------------------------------
def passages_block(hits: list[Hit], first: int = 1) -> str:
    parts = []
    for n, h in enumerate(hits, first):
        c = h.chunk
        head = f" ({c.heading})" if c.heading else ""
        parts.append(f"[{n}] {c.where}{head}\n{c.text.strip()}")
    return "\n\n".join(parts)


def plain_history(history: list[dict[str, Any]], turns: int) -> list[dict[str, str]]:
    """Earlier user/assistant text only (tool panels and citation links removed), last turns."""
    out = []
    for m in history or []:
        role, content = m.get("role"), m.get("content")
        if isinstance(content, list):  # Gradio 6 hands messages back as content parts
            content = "\n".join(p.get("text", "") for p in content
                                if isinstance(p, dict) and p.get("type") == "text")
        if role not in ("user", "assistant") or not isinstance(content, str):
            continue
        if (m.get("metadata") or {}).get("title"):  # tool-call panels shown in the chat
            continue
        content = _LINKED.sub(r"[\1]", content)
        for footer in FOOTERS:  # what the tab adds under an answer is not the model's text
            content = content.split(footer)[0]
        content = content.strip()
        if content:
            out.append({"role": role, "content": content})
    return out[-2 * turns:] if turns > 0 else []


def build_messages(question: str, hits: list[Hit], history: list[dict[str, Any]],
                   turns: int = 4) -> list[dict[str, str]]:
    """System rules, earlier turns, then the passages and the question in one user message."""
    user = f"Passages from my notes:\n\n{passages_block(hits)}\n\nQuestion: {question.strip()}"
    return [{"role": "system", "content": SYSTEM}, *plain_history(history, turns),
            {"role": "user", "content": user}]


# ----- citations -------------------------------------------------------------------------------
def cited_numbers(text: str, n_hits: int) -> list[int]:
    seen: list[int] = []
    for m in _CITE.finditer(text):
        n = int(m.group(1))
        if 1 <= n <= n_hits and n not in seen:
            seen.append(n)
    return seen


def content_words(text: str) -> set[str]:
    return {w for w in split_words(text) if w not in _STOP}


def attribute(text: str, hits: list[Hit]) -> int | None:
    """The passage (1-based) sharing the most content words with `text`, or None."""
    words = content_words(text)
    best, best_n = 0, None
    for n, h in enumerate(hits, 1):
        overlap = len(words & content_words(h.chunk.text + " " + h.chunk.heading))
        if overlap > best:
            best, best_n = overlap, n
    return best_n


def says_idk(text: str) -> bool:
    low = text.lower()
    return "don't know from your notes" in low or "do not know from your notes" in low


NOT_CITED = ("The answer cites no passage: check it against your notes. The passage that "
             "shares the most words with it is shown as related, not as a source.")
UNMATCHED = "The answer cites no passage and matches none: check it against your notes."


def finish(text: str, hits: list[Hit]) -> Answer:
    """Work out an answer's citations: only the numbers the model wrote. When it wrote none,
    the passage sharing the most words is kept as `related` (never as a citation)."""
    text = text.strip()
    ans = Answer(text=text, hits=hits)
    if not text or says_idk(text):
        ans.idk = says_idk(text)
        return ans
    ans.citations = cited_numbers(text, len(hits))
    if not ans.citations:
        n = attribute(text, hits)
        ans.related = [n] if n is not None else []
        ans.notices.append(NOT_CITED if n is not None else UNMATCHED)
    return ans


def link_citations(text: str) -> str:
    """[n] as a link to passage n in the side panel (Markdown)."""
    return _CITE.sub(lambda m: f"[[{m.group(1)}]](#rag-src-{m.group(1)})", text)


# ----- tools -----------------------------------------------------------------------------------
class NoteTools:
    """`search_notes` and `read_source` for the model, numbering every passage they return."""

    def __init__(self, search: Callable[[str], SearchResult],
                 read: Callable[[str, int, int], str]):
        self._search = search
        self._read = read
        self.hits: list[Hit] = []

    def functions(self) -> list[Callable]:
        def search_notes(query: str) -> str:
            """Search the user's notes and code for passages about a topic.

            Args:
                query: What to look for, in a few words.
            """
            found = [h for h in self._search(query).hits if h.relevant]
            if not found:
                return "No relevant passages."
            first = len(self.hits) + 1
            self.hits.extend(found)
            return passages_block(found, first)

        def read_source(path: str, start: int, end: int) -> str:
            """Read lines of one of the user's files, as indexed.

            Args:
                path: The file path as shown in search results.
                start: First line number (1-based).
                end: Last line number (inclusive).
            """
            return self._read(path, start, end)

        return [search_notes, read_source]


# ----- the answer stream -----------------------------------------------------------------------
def retrieve_for(question: str, history: list[dict[str, Any]],
                 search: Callable[[str], SearchResult]) -> SearchResult:
    """Search with the question; a follow-up that finds nothing on its own ("and its port?")
    is searched again together with the previous question."""
    result = search(question)
    if result.relevant:
        return result
    earlier = [m["content"] for m in plain_history(history, 8) if m["role"] == "user"]
    if earlier:
        again = search(f"{earlier[-1]} {question}")
        if again.relevant:
            return again
    return result


def answer_stream(engine: Any, question: str, history: list[dict[str, Any]],
                  search: Callable[[str], SearchResult], read: Callable[[str, int, int], str],
                  cfg: AnswerConfig, stop_event: threading.Event | None = None
                  ) -> Iterator[AnswerEvent]:
    """Retrieve, then stream the engine's grounded answer; ends with a ``done`` event."""
    from studio.llm import GenerationSettings, NoToolTemplate

    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, seed=0)
    notices: list[str] = []
    if cfg.use_tools:
        tools = NoteTools(search, read)
        messages = [{"role": "system", "content": SYSTEM_TOOLS},
                    *plain_history(history, cfg.history_turns),
                    {"role": "user", "content": question.strip()}]
        try:
            events = engine.stream_chat(messages, settings, tools=tools.functions(),
                                        stop_event=stop_event)
            first = next(events)  # the template check happens before the first token
        except NoToolTemplate as exc:
            notices.append(f"Tools are off for this model: {exc}")
            yield AnswerEvent("notice", text=notices[-1])
        except StopIteration:
            first, events = None, iter(())
        else:
            yield from _stream_with_tools(first, events, tools, notices)
            return
    result = retrieve_for(question, history, search)
    hits = result.relevant
    yield AnswerEvent("sources", hits=hits)
    if not hits:
        ans = Answer(text=IDK, hits=[], idk=True, notices=notices)
        yield AnswerEvent("text", text=IDK)
        yield AnswerEvent("done", answer=ans)
        return
    messages = build_messages(question, hits, history, cfg.history_turns)
    text = ""
    for ev in engine.stream_chat(messages, settings, stop_event=stop_event):
        if ev.kind == "text":
            text += ev.text
            yield AnswerEvent("text", text=ev.text)
        elif ev.kind == "notice":
            notices.append(ev.text)
            yield AnswerEvent("notice", text=ev.text)
        elif ev.kind == "done":
            text = ev.text or text
    ans = finish(text, hits)
    ans.notices = notices + ans.notices
    yield AnswerEvent("done", answer=ans)


def _stream_with_tools(first: Any, events: Iterator[Any], tools: NoteTools,
                       notices: list[str]) -> Iterator[AnswerEvent]:
    text = ""
    calls: list[dict[str, Any]] = []
    for ev in _chain(first, events):
        if ev.kind == "text":
            text += ev.text
            yield AnswerEvent("text", text=ev.text)
        elif ev.kind == "tool_call":
            calls.append(ev.tool_call.as_dict())
            yield AnswerEvent("tool_call", tool_call=ev.tool_call)
            yield AnswerEvent("sources", hits=list(tools.hits))
        elif ev.kind == "notice":
            notices.append(ev.text)
            yield AnswerEvent("notice", text=ev.text)
        elif ev.kind == "done":
            text = ev.text
    if not tools.hits and not text.strip():
        text = IDK
    ans = finish(text, list(tools.hits))
    ans.notices = notices + ans.notices
    ans.tool_calls = calls
    yield AnswerEvent("done", answer=ans)


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest
