"""Import kubernetes-asyncio's generated client only as far as it is used.

`import kubernetes_asyncio` runs package `__init__` files that import every generated
API and model class (about 1,300 modules): some 30 MiB of resident memory, a quarter of
the operator's, for classes it never uses (it reads and writes plain JSON, see kube.py).
Kopf imports the package too, to recognise its model objects.

:func:`install` puts in lazy stand-ins for those package modules: the same search path
and the same names, each imported on first access, as PEP 562 module `__getattr__`
allows. What `__init__` would have exported is read from its `from X import Y` and
`import X as Y` lines, so a new library version needs no change here;
tests/unit/test_lazy_imports.py checks the names the operator and Kopf use.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

LAZY_PACKAGES = (
    "kubernetes_asyncio",
    "kubernetes_asyncio.client",
    "kubernetes_asyncio.client.api",
    "kubernetes_asyncio.client.models",
)
_EXPORT = re.compile(r"^from ([\w.]+) import (\w+)$", re.MULTILINE)
_ALIAS = re.compile(r"^import ([\w.]+) as (\w+)$", re.MULTILINE)


def install() -> None:
    """Before anything imports kubernetes_asyncio; a no-op once it is imported (for real or lazily)."""
    for name in LAZY_PACKAGES:
        if name not in sys.modules:
            sys.modules[name] = _lazy_package(name)


def _lazy_package(name: str) -> types.ModuleType:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package")
    source = Path(spec.origin).read_text()
    exports = {attr: module for module, attr in _EXPORT.findall(source)}
    exports.update({attr: module for module, attr in _ALIAS.findall(source)})
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__spec__ = spec
    package.__package__ = name
    for dunder in ("__version__", "__project__"):
        found = re.search(rf'^{dunder} = "([^"]*)"$', source, re.MULTILINE)
        if found:
            setattr(package, dunder, found.group(1))

    def __getattr__(attr: str) -> Any:  # noqa: N807 - PEP 562 names it so
        if attr in exports:
            module = importlib.import_module(exports[attr])
            value = module if module.__name__ == f"{name}.{attr}" else getattr(module, attr)
        else:
            try:
                value = importlib.import_module(f"{name}.{attr}")
            except ModuleNotFoundError:
                raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None
        setattr(package, attr, value)
        return value

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    return package
