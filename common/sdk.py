"""`tinker.types`, imported on first use.

`import tinker` takes about a second of CPU here (tinker.types tries `import torch`), which
`--help` and a mistyped flag should not wait for. Scripts write `from common.sdk import types`
and use it exactly like `from tinker import types`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """Stands for the module `name`; imports it when the first attribute is looked up."""

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


types = LazyModule("tinker.types")
