"""``benchmark.press_catalog`` is :mod:`benchmark.protocol.press_catalog`, where the code lives."""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("benchmark.protocol.press_catalog", run_name="__main__", alter_sys=True)
else:
    from .protocol import press_catalog as _moved

    sys.modules[__name__] = _moved  # the moved module itself, not a copy: one set of globals
