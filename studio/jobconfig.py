"""Typed job configs: one dataclass per job kind, defaults in the class, UI labels and help in
field metadata, loaded from a run's config.json with unknown keys refused (a typo in a saved
config must not silently fall back to a default)."""

from __future__ import annotations

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
        """Raise ValueError with a message a user can act on."""

    def check_choices(self) -> None:
        """Every field declared with ``choices=`` holds one of them (subclasses call this from
        validate(), so a choice list lives in one place: the field)."""
        for f in fields(self):
            allowed = f.metadata.get("choices")
            value = getattr(self, f.name)
            if allowed is not None and value not in allowed:
                label = f.metadata.get("label", f.name)
                if label[1:2].islower():  # messages read lower-case: "schedule must be ..."
                    label = label[0].lower() + label[1:]
                raise ValueError(f"{label} must be one of {', '.join(map(str, allowed))}; "
                                 f"got {value!r}")

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
