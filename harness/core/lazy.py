"""Re-exports that import on first use: a package's `__init__` names its public API without
importing the modules behind it, so that `import harness.report` (say) never pulls in torch."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level __getattr__ for `package`: exports maps a public name to the submodule
    (relative to `package`) that defines it."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
