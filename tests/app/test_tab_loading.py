"""A tab package that fails to import shows an error tab with its reason; every tab package in
TAB_MODULES that exists appears in the studio."""

from __future__ import annotations

import importlib.util

from studio.app import TAB_MODULES, BrokenTab, available_tabs, build_app


def _tab_labels(app) -> list[str]:
    return [b.label for b in app.blocks.values() if type(b).__name__ == "Tab"]


def test_a_tab_that_fails_to_import_becomes_an_error_tab_with_its_reason(studio, caplog):
    tabs = available_tabs(["tests.app.toytab", "tests.app.brokentab", "tests.app.not_built"])
    assert [t.__name__ for t in tabs] == ["tests.app.toytab", "tests.app.brokentab"]
    broken = tabs[1]
    assert isinstance(broken, BrokenTab) and "missing_part" in broken.reason
    assert "tests.app.brokentab failed to import" in caplog.text
    app = build_app(studio, tab_modules=["tests.app.toytab", "tests.app.brokentab"])
    assert _tab_labels(app) == ["Toy", "⚠ brokentab"]
    shown = [b.value for b in app.blocks.values() if type(b).__name__ == "Markdown"
             and "failed to load" in str(b.value)]
    assert shown and "missing_part" in shown[0] and "tests.app.brokentab" in shown[0]


def test_every_existing_tab_package_appears():
    existing = [m for m in TAB_MODULES if importlib.util.find_spec(m) is not None]
    assert "tabs.rag" in existing and "tabs.chat" in existing
    names = [t.__name__ for t in available_tabs()]
    assert names == existing, "a tab package that exists is missing from the studio"
    broken = {t.__name__: t.reason for t in available_tabs() if isinstance(t, BrokenTab)}
    assert not broken, f"tabs that fail to import: {broken}"
