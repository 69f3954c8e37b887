"""A test-only tab package that exists but cannot import: a module inside it is missing (the
case that used to make a tab vanish without a word)."""

from tests.app.brokentab import missing_part  # noqa: F401  (there is no such module)

TITLE = "Broken"


def build_ui(studio):
    pass
