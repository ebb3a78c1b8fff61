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
