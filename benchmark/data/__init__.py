"""Bundled data for lorakv-bench: the fictional mini datasets and their generator."""
