"""Tiny random models and an offline tokenizer: fast unit tests and submission conformance checks
(seconds, no downloads)."""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from . import attention

CORPUS = [
    "Maren Oskvik opened a bakery in Tollervik in 1987. Her brother Anders moved to Quillsby.",
    "The patient received 40 mg of Velatrixin daily. Dr. Halvorsen noted a creatinine of 1.8 mg/dL.",
    "Question: Where did Maren open her bakery? Answer: Tollervik",
    "Read the context and answer the question with a few words. Context: Answer:",
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<eos>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(kind: str = "llama", seed: int = 0, **config):
    """A 2-layer random model with GQA (4 query heads, 2 KV heads); ``config`` overrides any of that
    (e.g. ``num_attention_heads=8`` for groups of 4 query heads per KV head)."""
    tok = tiny_tokenizer()
    common = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    ) | config
    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, attn_implementation=attention.register()))
    elif kind == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16, attn_implementation=attention.register()))
    elif kind == "qwen2":  # Qwen2.5 (the mini tier's second model): q/k/v biases
        model = Qwen2ForCausalLM(Qwen2Config(**common, attn_implementation=attention.register()))
    else:
        raise ValueError(kind)
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.eval(), tok


def load_tiny_model(model_spec=None, device: str | None = None, dtype: str | None = None):
    """The tiny random llama (seeded: the same weights at every call) whatever model is asked for, on
    ``device``, in ``dtype`` (float32 | bfloat16) when given: a ``load_model`` of
    :class:`benchmark.protocol.evaluator.Loaders` for smoke runs of code that loads spec models (``perf/``'s
    ``--tiny``)."""
    from ..config import RUN_DTYPES

    model, tok = tiny_model("llama")
    if dtype is not None:
        if dtype not in RUN_DTYPES:
            raise ValueError(f"dtype {dtype}: expected one of {', '.join(RUN_DTYPES)}")
        model = model.to(getattr(torch, dtype))
    if device is not None:
        model = model.to(device)
    return model, tok


def add_tiny_argument(parser) -> None:
    """``--tiny`` on a ``perf/`` script's parser: run it on :func:`load_tiny_model` in place of the
    spec's model (the scripts' smoke tests run them so)."""
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny random model (benchmark.protocol.tiny) in place of the spec's: a smoke run "
                             "of the script")
