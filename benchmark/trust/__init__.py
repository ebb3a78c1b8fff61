"""Where submission code runs (the sandboxed worker) and the checks on submissions and result files."""
