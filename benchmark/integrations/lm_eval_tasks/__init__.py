"""lm-evaluation-harness tasks for lorakv-bench (YAML configs + :mod:`.utils`).

Point lm-eval at this folder with ``--include_path`` (``lorakv-lm-eval`` does it for you).
"""

from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent
