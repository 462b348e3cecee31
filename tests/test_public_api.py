from __future__ import annotations

import trioactors


def test_public_names_are_documented_and_clean() -> None:
    for name in dir(trioactors):
        if name.startswith("_"):
            continue
        obj = getattr(trioactors, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type):
            assert module == "trioactors", f"{name} shows module {module}"
            assert obj.__doc__, f"{name} has no docstring"


def test_every_error_derives_from_the_root() -> None:
    for name in dir(trioactors):
        obj = getattr(trioactors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, trioactors.TrioactorsError), name


def test_ask_timeout_is_a_timeout_error() -> None:
    assert issubclass(trioactors.AskTimeout, TimeoutError)
    assert issubclass(trioactors.ActorNotFound, LookupError)
