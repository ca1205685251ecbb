"""Start-up checks shared by every component: fail early, name the setting, list the fix."""

from __future__ import annotations

from collections.abc import Iterable


def check_choice(setting: str, value: object, choices: Iterable[str]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``; the message lists the valid names."""
    valid = tuple(choices)
    if value not in valid:
        listed = ", ".join(repr(c) for c in valid)
        raise ValueError(f"{setting}={value!r} is not supported. Valid values: {listed}.")
