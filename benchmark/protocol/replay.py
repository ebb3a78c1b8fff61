"""Context-replay scoring (the ``replay`` presses of ``press_catalog.CATALOG``: kvpress ``KVzipPress``,
``KVgradPress``), scoped to the document.

KVzip scores a cache entry by how much the model attends to it while *reconstructing* the
context: after the prefill, the context is fed again behind "Repeat the previous context
exactly." and each entry's score is the largest attention any replay query pays it (KVgrad
weights that by ||v W_O|| and the gradient of the last hidden states, from a backward pass over
the replay). The scores do
not depend on the question, which is this benchmark's setting: the document is compressed before
the question is seen.

Scoped here the way every press is: the replayed context is the document only (kvpress's
``prefix_length`` is our document start, so the chat template and instruction are never replayed
and never scored), the replay runs on the very cache of our prefill (KVzip's ``forward_hook``
cuts the replay tokens back off after every layer, KVgrad reads the cache read-only: either way
the cache is left as it was),
and the budget is applied to document entries only: ``kv_heads * n_layers * n_kept(n_doc,
rho)`` entries kept in all (the spec's budget), split across layers and heads by score (``layerwise: true``: the same
number per layer, split across its heads). The result is one keep mask per layer and rho, evicted
by ``compression.evict`` like any head-wise budget.
"""

from __future__ import annotations

import torch


def _suffix_ids(tokenizer) -> torch.Tensor:
    """The tokens that close a user turn and open the assistant's, as KVzipPress derives them."""
    if tokenizer.chat_template is None:
        text = "\n"
    else:
        dummy = "dummy context"
        sep = "\n" + "#" * len(dummy)
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": dummy + sep}], add_generation_prompt=True,
                                                 tokenize=False, enable_thinking=False)
        text = rendered.split(sep)[1]
    return tokenizer.encode(text, return_tensors="pt", add_special_tokens=False)


@torch.no_grad()
def replay_scores(model, tokenizer, cache, input_ids: list[int], doc_span: tuple[int, int], press) -> torch.Tensor:
    """The press's replay scores of the document entries: (n_layers, kv_heads, n_doc). ``cache``
    holds the prefill of ``input_ids`` (prefix + document) and is left as it was.

    The press's own scoring pass runs (``_perform_kvzip_compression``: chunking, replay prompts,
    hooks; KVgrad's backward pass), with kvpress's ``prefix_length`` set to the document start so
    only the document is replayed; its final ``compress_post`` (a budget over the whole prompt,
    prefix included) is switched off: the budget is ours (:func:`keep_masks`)."""
    doc_start, doc_end = doc_span
    if tokenizer is None:
        raise ValueError(f"{type(press).__name__} replays the document and needs the tokenizer "
                         "(prefill(..., tokenizer=))")
    lengths = [layer.keys.shape[2] for layer in cache.layers]
    press._reset_internal_parameters()
    press.post_init_from_model(model)
    press._context_ids = torch.tensor([input_ids])
    press._cache = cache
    press.prefix_length = doc_start  # kvpress replays context_ids[prefix_length:]: the document only
    press._suffix_ids = _suffix_ids(tokenizer)
    press.compress_post = lambda model: None  # instance attribute: the class's budget step is not run
    try:
        press._perform_kvzip_compression(model, tokenizer)
        if [layer.keys.shape[2] for layer in cache.layers] != lengths:
            raise RuntimeError("the replay left tokens in the cache")  # kvpress cuts them; never reached
        return press.score_val[:, 0, :, doc_start:doc_end].float().clone()  # (layers, heads, n_doc)
    finally:
        del press.compress_post
        press._reset_internal_parameters()


def keep_masks(scores: torch.Tensor, n_keep: int, layerwise: bool) -> list[torch.Tensor]:
    """Per layer (kv_heads, n_doc) keep masks (1.0 = kept): the top entries by score, kv_heads *
    n_layers * ``n_keep`` in all (per layer when ``layerwise``); ``n_keep`` is the spec's budget per
    head (``compression.n_kept``)."""
    n_layers, heads, n_doc = scores.shape
    keep = torch.zeros_like(scores)
    if layerwise:
        flat = scores.reshape(n_layers, -1)
        top = flat.topk(heads * n_keep, dim=-1).indices
        keep.view(n_layers, -1).scatter_(1, top, 1.0)
    else:
        top = scores.reshape(-1).topk(n_layers * heads * n_keep).indices
        keep.view(-1)[top] = 1.0
    return list(keep.unbind(0))
