"""Hooks the size fixes put on a user's modules, in a form that survives ``copy.deepcopy``,
``pickle`` and ``torch.save`` of the model (no closures: a module-level function and its bound
arguments)."""

from __future__ import annotations

from collections.abc import Callable


class BoundHook:
    """``function(*bound, *args)`` as a forward (pre-)hook or stand-in: what a closure would
    do, but picklable wherever ``function`` is module-level and ``bound`` is picklable."""

    def __init__(self, function: Callable, *bound) -> None:
        self.function = function
        self.bound = bound

    def __call__(self, *args):
        return self.function(*self.bound, *args)

    def __repr__(self) -> str:
        return f"BoundHook({self.function.__module__}.{self.function.__qualname__})"


def always() -> bool:
    """The default ``effective`` of a fix's context: in force."""
    return True


def never() -> bool:
    """The default ``scale_in_force`` of a position context: no scale."""
    return False


__all__ = ["BoundHook", "always", "never"]
