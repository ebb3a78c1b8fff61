"""lorakv-bench: KV-cache compression x document-specific LoRA adapters on document QA."""

__version__ = "0.1.0"
