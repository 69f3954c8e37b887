"""One rule for every handler: bad input becomes a message that names the action and what to
do, never a bare "Error" with the traceback only in the log.

`friendly` wraps one handler (plain, generator or async); `guard_app` wraps every backend
function of a built app once, so each tab's handlers get it without copies of try/except.
Logic errors (ValueError and its kin) already carry a sentence for the user and pass through as
they are; anything unexpected is logged with its traceback and shown as "<action> failed on
this input (<type>: <text>). Check <the inputs> and try again".
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

log = logging.getLogger("studio.ui")

# Exceptions whose text is written for the user (the logic layer raises them on bad input).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError,
                                                PermissionError, IsADirectoryError,
                                                NotADirectoryError)


# Python's own conversion messages say nothing about which input was wrong.
_PYTHON_CONVERSIONS = ("invalid literal for", "could not convert", "cannot convert",
                       "int() argument", "float() argument")


def _text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else ""
    return str(arg if isinstance(arg, str) and arg else exc)[:2000]


def to_gr_error(exc: BaseException, action: str, inputs: str = "") -> gr.Error:
    """The message the user sees for `exc` raised while doing `action`."""
    if isinstance(exc, gr.Error):
        return exc
    where = f" ({inputs})" if inputs else ""
    text = _text(exc)
    if isinstance(exc, UnicodeDecodeError):
        return gr.Error(f"{action}: a file is not UTF-8 text{where}; save it as UTF-8 and try "
                        "again.")
    if isinstance(exc, KeyError) and " " not in text:
        return gr.Error(f"{action}: unknown or missing {text!r}{where}; check the names you "
                        "gave.")
    if isinstance(exc, (ValueError, TypeError)) and text.startswith(_PYTHON_CONVERSIONS):
        return gr.Error(f"{action}: a value is not of the expected kind ({text}){where}; give "
                        "numbers where numbers are asked for.")
    if isinstance(exc, (AttributeError, TypeError)) and "'NoneType'" in text:
        return gr.Error(f"{action}: a required input is empty or was not loaded ({text}){where}; "
                        "fill it in (or load it first) and try again.")
    if isinstance(exc, USER_ERRORS) and text:
        return gr.Error(text)
    if isinstance(exc, RecursionError):
        return gr.Error(f"{action}: the input is nested too deeply to read; flatten it"
                        + (f" ({inputs})" if inputs else "") + ".")
    if isinstance(exc, MemoryError):
        return gr.Error(f"{action}: the input is too large to process in memory; use a smaller "
                        "one.")
    what = f"Check {inputs} and try again" if inputs else "Check the inputs and try again"
    detail = _text(exc) or "no details"
    return gr.Error(f"{action} failed on this input ({type(exc).__name__}: {detail[:300]}). "
                    f"{what}; the server log has the details.")


def quiet(err: gr.Error) -> gr.Error:
    """A message for the user is not a crash: Gradio prints a traceback to the server log for
    every gr.Error unless told not to (57 in one session drowned the real errors). Real errors
    are logged with their traceback by `friendly` before they become a message."""
    err.print_exception = False
    return err


class _AsMessages:
    """Around one call of a handler (plain, generator or async alike): a gr.Error goes on
    quietly, any other exception leaves as the gr.Error `fail` makes of it."""

    def __init__(self, fail: Callable[[Exception], gr.Error]) -> None:
        self.fail = fail

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, gr.Error):
            quiet(exc)
        elif isinstance(exc, Exception):  # a message now; `fail` logged a real error
            raise self.fail(exc) from None
        return False


def friendly(fn: Callable[..., Any] | None = None, *, action: str | None = None,
             inputs: str = "") -> Any:
    """Decorator: exceptions from `fn` become gr.Error messages (see the module docstring).
    The wrapper keeps the signature, so gr.Progress / gr.Request parameters still work."""
    if fn is None:
        return lambda f: friendly(f, action=action, inputs=inputs)
    if getattr(fn, "_studio_friendly", False):
        return fn
    name = action or getattr(fn, "__name__", "this action").strip("_").replace("_", " ")
    name = name[:1].upper() + name[1:]

    def fail(e: Exception) -> gr.Error:
        if not isinstance(e, gr.Error) and not isinstance(e, USER_ERRORS):
            log.exception("%s failed", name)  # a real error: its traceback in the log, once
        return quiet(to_gr_error(e, name, inputs))

    if inspect.isasyncgenfunction(fn):
        async def wrapper(*a: Any, **k: Any) -> Any:
            with _AsMessages(fail):
                async for item in fn(*a, **k):
                    yield item
    elif inspect.isgeneratorfunction(fn):
        def wrapper(*a: Any, **k: Any) -> Any:
            with _AsMessages(fail):
                yield from fn(*a, **k)
    elif inspect.iscoroutinefunction(fn):
        async def wrapper(*a: Any, **k: Any) -> Any:
            with _AsMessages(fail):
                return await fn(*a, **k)
    else:
        def wrapper(*a: Any, **k: Any) -> Any:
            with _AsMessages(fail):
                return fn(*a, **k)
    functools.update_wrapper(wrapper, fn)
    wrapper._studio_friendly = True  # type: ignore[attr-defined]
    return wrapper


def _labels(components: list[Any]) -> str:
    names = [str(getattr(c, "label", "") or "") for c in components]
    names = [n for n in names if n][:6]
    return ", ".join(f"'{n}'" for n in names)


def guard_app(app: gr.Blocks) -> gr.Blocks:
    """Wrap every backend function of `app` with `friendly` (named after its api_name and
    inputs). Called once by build_app after all tabs are built."""
    fns = app.fns.values() if isinstance(app.fns, dict) else app.fns
    for block_fn in fns:
        fn = getattr(block_fn, "fn", None)
        if fn is None or getattr(fn, "_studio_friendly", False):
            continue
        api = block_fn.api_name if isinstance(block_fn.api_name, str) else None
        name = getattr(fn, "__name__", "")
        action = (api or (name if name and not name.startswith("<") else "this action"))
        action = action.replace("_", " ")
        block_fn.fn = friendly(fn, action=action, inputs=_labels(list(block_fn.inputs or [])))
    return app
