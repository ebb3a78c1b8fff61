"""The spec names each model's weights exactly (``description``, ``upstream``), the docs show the
spec's words, and those documenting fields change no spec hash."""

from __future__ import annotations

import re
from pathlib import Path

from benchmark.protocol.spec import load_spec, spec_hash

REPO = Path(__file__).resolve().parents[1]


def _words(text: str) -> str:
    return " ".join(text.replace("`", "").split())


def test_docs_name_the_mini_models_as_the_spec_does():
    tiers = _words((REPO / "docs" / "tiers.md").read_text())
    readme = _words((REPO / "README.md").read_text())
    for m in load_spec("mini").models:
        assert m.description and m.upstream, m.id
        assert f"| {m.id}" in tiers and m.upstream in tiers and _words(m.description) in tiers, m.id
        quant = re.search(r"GGUF (Q\w+)", m.description).group(1)
        assert re.search(rf"{re.escape(m.id)}, .*?dequantised from GGUF {quant}", readme), (m.id, quant)


def test_describing_fields_are_not_hashed():
    raw = load_spec("mini").raw
    models = [dict(m) for m in raw["models"]]
    models[0]["description"] = "something else"
    models[0]["upstream"] = "someone/else"
    assert spec_hash(raw | {"models": models}) == load_spec("mini").hash
    models[0]["name"] = "another name"  # what a result records is hashed
    assert spec_hash(raw | {"models": models}) != load_spec("mini").hash
