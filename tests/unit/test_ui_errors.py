"""studio.ui.errors.friendly wraps every kind of handler alike: plain, generator, coroutine and
async generator. A real error becomes a message naming the action, logged once with its
traceback; a gr.Error the handler raised passes as it is, without a traceback print."""

from __future__ import annotations

import asyncio
import logging

import gradio as gr
import pytest

from studio.ui.errors import friendly


def _plain(kind):
    raise {"real": ZeroDivisionError("division by zero"), "user": gr.Error("Pick a run")}[kind]


def _gen(kind):
    yield 1
    _plain(kind)


async def _coro(kind):
    _plain(kind)


async def _agen(kind):
    yield 1
    _plain(kind)


def _call(wrapped, kind):
    """Run the wrapper to its end, whatever kind it is; the items it gave."""
    if asyncio.iscoroutinefunction(wrapped):
        return asyncio.run(wrapped(kind))

    async def drain():
        return [x async for x in wrapped(kind)]

    if hasattr(wrapped(kind), "__aiter__"):
        return asyncio.run(drain())
    out = wrapped(kind)
    return list(out) if hasattr(out, "__next__") else out


@pytest.mark.parametrize("fn", [_plain, _gen, _coro, _agen], ids=lambda f: f.__name__)
def test_every_kind_of_handler_turns_errors_into_messages(fn, caplog):
    wrapped = friendly(fn, action="Export run")
    with caplog.at_level(logging.ERROR, logger="studio.ui"):
        with pytest.raises(gr.Error) as real:
            _call(wrapped, "real")
    assert "Export run failed on this input (ZeroDivisionError: division by zero)" in \
        real.value.message
    assert real.value.print_exception is False
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and isinstance(logged[0].exc_info[1], ZeroDivisionError)

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="studio.ui"):
        with pytest.raises(gr.Error) as user:
            _call(wrapped, "user")
    assert user.value.message == "Pick a run" and user.value.print_exception is False
    assert not caplog.records  # a message for the user is not logged as a crash
