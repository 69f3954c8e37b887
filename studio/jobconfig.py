"""Typed job configs: one dataclass per job kind, defaults in the class, UI labels and help in
field metadata, loaded from a run's config.json with unknown keys refused (a typo in a saved
config must not silently fall back to a default).

Every field is checked the same way before a job is queued (`check_fields`): its type, a finite
number, the ``minimum``/``maximum`` and ``choices`` of its metadata, and a length cap on text,
with the field's label in the message, so the UI and API callers get the same answer."""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, field, fields
from typing import Any, TypeVar

C = TypeVar("C", bound="JobConfig")


def setting(default: Any, label: str, help: str = "", **extra: Any) -> Any:
    """A dataclass field whose metadata gives the UI its label and help text."""
    meta = {"label": label, "help": help, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


class JobConfig:
    """Base of every job config dataclass; subclasses set NAME and may override validate()."""

    NAME = "job"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every subclass's validate() checks the declared fields first, so no caller can queue a
        # config that skipped them (the UI, the API and from_dict all call validate()).
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("validate")
        if own is not None and not getattr(own, "_checks_fields", False):
            def validate(self: JobConfig, _own: Any = own) -> None:
                self.check_fields()
                _own(self)

            validate._checks_fields = True  # type: ignore[attr-defined]
            validate.__doc__ = own.__doc__
            cls.validate = validate  # type: ignore[method-assign]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.NAME} settings: {sorted(unknown)}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Raise ValueError with a message a user can act on (subclasses add their own rules;
        the declared field checks always run first)."""
        self.check_fields()

    def check_fields(self) -> None:
        """Type, finiteness, range, choices and length of every field, from its declaration:
        ``setting(..., minimum=, maximum=, choices=, max_chars=)``. Whole floats given for an
        int field (JSON has one number type) become ints."""
        for f in fields(self):
            self._check_one(f)
        self.check_choices()

    def _check_one(self, f: Any) -> None:
        """Check and normalise one field (see `check_fields`). Messages start with the
        field's label as the form shows it."""
        meta = f.metadata
        label = meta.get("label", f.name)
        value = getattr(self, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind == "bool":
            if value not in (True, False, 0, 1):
                raise ValueError(f"{label} must be true or false, got {_show(value)}")
            setattr(self, f.name, bool(value))
            return
        if kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{label} must be a number, got {_show(value)}") from None
            if not math.isfinite(value):
                raise ValueError(f"{label} must be a finite number, got {_show(value)}")
            if kind == "int":
                if value != int(value):
                    raise ValueError(f"{label} must be a whole number, got {_show(value)}")
                value = int(value)
            lo, hi = meta.get("minimum"), meta.get("maximum")
            if lo is not None and value < lo or hi is not None and value > hi:
                raise ValueError(f"{label} must be between {lo if lo is not None else '-∞'} "
                                 f"and {hi if hi is not None else '∞'}, got {_show(value)}")
            setattr(self, f.name, value)
        elif kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"{label} must be text, got {_show(value)}")
            cap = meta.get("max_chars", 4096)
            if len(value) > cap:
                raise ValueError(f"{label} is {len(value)} characters long; at most {cap}")
        elif kind == "list":
            if not isinstance(value, list):
                raise ValueError(f"{label} must be a list, got {_show(value)}")
            cap = meta.get("max_items", 100_000)
            if len(value) > cap or any(isinstance(v, str) and len(v) > 4096 for v in value):
                raise ValueError(f"{label}: at most {cap} entries of up to 4096 characters")

    def check_choices(self) -> None:
        """Every field declared with ``choices=`` holds one of them (subclasses call this from
        validate(), so a choice list lives in one place: the field)."""
        for f in fields(self):
            allowed = f.metadata.get("choices")
            value = getattr(self, f.name)
            if allowed is not None and value not in allowed:
                label = _lower(f.metadata.get("label", f.name))
                raise ValueError(f"{label} must be one of {', '.join(map(str, allowed))}; "
                                 f"got {value!r}")

    @classmethod
    def coerce(cls, name: str, value: Any) -> Any:
        """A widget or API value as the field's type, or ValueError naming the field (for UI
        code that must compute with a value before the whole config is checked)."""
        probe = cls.__new__(cls)
        for f in fields(cls):
            object.__setattr__(probe, f.name, cls.default_of(f.name))
        object.__setattr__(probe, name, value)
        probe._check_one(cls._field(name))
        return getattr(probe, name)

    @classmethod
    def _field(cls, name: str) -> Any:
        for f in fields(cls):
            if f.name == name:
                return f
        raise KeyError(name)

    @classmethod
    def label_of(cls, name: str) -> str:
        return cls._field(name).metadata.get("label", name)

    @classmethod
    def help_of(cls, name: str) -> str:
        return cls._field(name).metadata.get("help", "")

    @classmethod
    def default_of(cls, name: str) -> Any:
        f = cls._field(name)
        return f.default_factory() if f.default is MISSING else f.default


def _lower(label: str) -> str:
    """Messages read lower-case ("schedule must be ..."), acronyms stay ("LoRA rank")."""
    first = label.split(" ", 1)[0]
    return label[0].lower() + label[1:] if first[1:].islower() else label


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
