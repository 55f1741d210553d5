"""A package face whose names load their submodule on first use (PEP 562 module __getattr__): importing the package
costs nothing, and a command loads only the modules it uses."""

from __future__ import annotations

import importlib
import sys


def loader(package: str, where: dict[str, str]):
    """The package's __getattr__: `name` from its submodule `where[name]`, kept on the package once loaded."""

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # (once)
        return value

    return __getattr__
