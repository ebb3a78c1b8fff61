"""``benchmark.lm_eval_model`` is :mod:`benchmark.integrations.lm_eval_model`, where the code lives."""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("benchmark.integrations.lm_eval_model", run_name="__main__", alter_sys=True)
else:
    from .integrations import lm_eval_model as _moved

    sys.modules[__name__] = _moved  # the moved module itself, not a copy: one set of globals
