"""The stages that define and run the task, one module per stage (runner.py wires them)."""
