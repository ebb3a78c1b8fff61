"""Optional dependencies. The core (evaluate, validate, smoke) needs none of them; the lm-eval
integration, the leaderboard plots and the Ray executor each need one extra of the package:

    pip install 'lorakv-bench[lm-eval]'   # lorakv-lm-eval, benchmark.integrations.lm_eval_model
    pip install 'lorakv-bench[plots]'     # lorakv-bench leaderboard (matplotlib)
    pip install 'lorakv-bench[ray]'       # --executor ray

``require`` turns a missing one into a one-line error that names the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: import name -> the extra that installs it (the names in pyproject.toml's optional-dependencies)
EXTRAS = {"lm_eval": "lm-eval", "matplotlib": "plots", "ray": "ray"}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` saying which extra ``purpose`` needs."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the extra is installed but one of its own imports failed: show that, not a hint
        extra = EXTRAS[module.split(".")[0]]
        raise MissingExtra(f"{purpose} needs the '{extra}' extra: pip install 'lorakv-bench[{extra}]'") from None
