"""Named implementations of one string setting (``loss_type``, ``scale_rewards``), in one place.

A registry maps each valid value of a setting to the object that implements it, so the registry is
the one list of valid names: an unknown name fails where the setting is read, listing the
registered ones, and adding a choice is one decorated class (plus its test), no if-chain to extend.
A setting whose values are also spelled out as a ``Literal`` (``LossType``, ``ScaleRewards``: the
choices LightningCLI shows, from ``GRPOModule.__init__``'s signature) lists them in registration
order, and a test keeps the two equal.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from grpo_lightning._checks import check_choice


class Named(Protocol):
    """What a registered class declares: the value of the setting that selects it."""

    name: str


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """The implementations of the setting ``setting``, one stateless instance per name, in
    registration order (the order error messages list them in)."""

    def __init__(self, setting: str) -> None:
        self.setting = setting
        self._entries: dict[str, T] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: register an instance of ``cls`` under ``cls.name``; a name taken twice is an error."""
        if cls.name in self._entries:
            raise ValueError(
                f"{self.setting}={cls.name!r} is registered twice ({type(self._entries[cls.name]).__name__} and "
                f"{cls.__name__}); give one of them another name."
            )
        self._entries[cls.name] = cls()
        return cls

    def get(self, name: str) -> T:
        """The implementation of ``name``; raises ValueError naming the setting and the valid names."""
        check_choice(self.setting, name, self._entries)
        return self._entries[name]

    @property
    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._entries)
