"""Estimated GPU memory peak and GPU hours of a paper-tier run, for ``evaluate --dry-run``.

These are ESTIMATES from a small cost model, not measurements (nothing of the paper tier has run
on a GPU). Every input is listed here:

* the architecture of each spec model (``ARCHITECTURES``, from its ``config.json``): the parameter
  count, the KV bytes per token, the LoRA parameters of a recipe's target modules;
* document lengths: the words of each document where the data is present, else the selection's
  bounds (``DOC_WORDS``), at ``TOKENS_PER_WORD`` tokens a word;
* the run's counts: prefills, trainings and answers per document (as the dry run lists them),
  the recipe's steps, the synthesis calls (one per 64-word section) and their tokens;
* the reference GPU (``REFERENCE_GPU``): peak bf16 throughput and memory bandwidth, and the
  fraction of each reached (``MFU``, ``BANDWIDTH_EFFICIENCY``).

Time: prefill and training are compute-bound (FLOPs / (peak x MFU)); decoding (answers, QA
synthesis) is bandwidth-bound (bytes read per step / (bandwidth x efficiency)). Memory: the
largest of the phases (prefill with the caches the runner keeps, decoding, training, synthesis),
weights included, in bf16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import Recipe

GIB = 2**30


@dataclass(frozen=True)
class Architecture:
    """What a decoder's cost depends on (the fields of its ``config.json``)."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied_embeddings: bool
    qkv_bias: bool = False  # Qwen2.x
    qk_norm: bool = False  # Qwen3

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear module of one layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}

    def parameters(self) -> int:
        """Every parameter: embeddings (and an untied head), per layer its linears, biases and norms."""
        linear = sum(i * o for i, o in self.module_shapes().values())
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        norms = 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)
        embed = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embed + self.layers * (linear + bias + norms) + self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def lora_parameters(self, recipe: Recipe) -> int:
        """LoRA A and B (r x in, out x r) per target module and layer, plus DoRA's magnitude vector."""
        shapes = self.module_shapes()
        per_layer = 0
        for name in recipe.lora.target_modules:
            i, o = shapes[name]
            per_layer += recipe.lora.r * (i + o) + (o if recipe.lora.use_dora else 0)
        return self.layers * per_layer


#: From each model's config.json (the revision the spec pins, or the GGUF's metadata).
ARCHITECTURES = {
    "llama-3.1-8b": Architecture(layers=32, hidden=4096, intermediate=14336, vocab=128256, heads=32, kv_heads=8,
                                 head_dim=128, tied_embeddings=False),
    "qwen3-4b": Architecture(layers=36, hidden=2560, intermediate=9728, vocab=151936, heads=32, kv_heads=8,
                             head_dim=128, tied_embeddings=True, qk_norm=True),
    "qwen2.5-0.5b": Architecture(layers=24, hidden=896, intermediate=4864, vocab=151936, heads=14, kv_heads=2,
                                 head_dim=64, tied_embeddings=True, qkv_bias=True),
    "smollm2-135m": Architecture(layers=30, hidden=576, intermediate=1536, vocab=49152, heads=9, kv_heads=3,
                                 head_dim=64, tied_embeddings=True),
}

#: Words per document where the data is absent: NarrativeQA, the selection rule (stories of
#: 8,000-12,000 words, specs/paper_selection.json); LongHealth, 5,090-6,754 words per patient
#: (the LongHealth paper, arXiv 2401.14490). (mean, largest).
DOC_WORDS = {"narrativeqa": (10_000, 12_000), "longhealth": (5_900, 6_754)}
TOKENS_PER_WORD = 1.4  # English prose and clinical letters with 128k-152k vocabularies (an assumption)
#: Expected tokens of one synthesis generation (4 JSON pairs; the cap is 2048) and of one QA
#: training example (the no-context prompt, the answer, the chat template).
SYNTHESIS_TOKENS = 300
QA_EXAMPLE_TOKENS = 96
CTX_WINDOW_TOKENS = 3 * 64 * TOKENS_PER_WORD  # ctx_qa neighbours: the section and one on each side
PAIRS_PER_SECTION = 4
SECTION_WORDS = 64


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    bf16_flops: float  # dense peak, FLOP/s
    bandwidth: float  # bytes/s


REFERENCE_GPU = GPU("H100 80GB SXM", 80, 989e12, 3.35e12)
MFU = 0.4  # fraction of peak FLOP/s a prefill or training step reaches
BANDWIDTH_EFFICIENCY = 0.6  # fraction of peak bandwidth a decoding step reaches


@dataclass(frozen=True)
class Workload:
    """One (model, submission, dataset) run: its documents and the dry run's counts per document."""

    model_id: str
    recipe: Recipe
    docs: int
    doc_words_mean: float
    doc_words_max: float
    questions: int  # all documents together
    rhos: tuple[float, ...]
    conditions: int
    prefills_per_doc: int  # distinct prefill and scoring weights
    max_new_tokens: int
    decode_batch: int = 64
    prompt_tokens: int = 80  # chat template and instruction around the document


@dataclass(frozen=True)
class Estimate:
    peak_gib: float
    gpu_hours: float
    phases_s: dict


def doc_tokens(words: float) -> float:
    return words * TOKENS_PER_WORD


def prefill_flops(arch: Architecture, tokens: float) -> float:
    """2 FLOPs per parameter per token, plus causal attention (QK^T and AV: 2 x 2 n^2 d / 2 per layer)."""
    return 2 * arch.parameters() * tokens + 2 * arch.layers * tokens**2 * arch.heads * arch.head_dim


def training_tokens(w: Workload) -> tuple[float, bool]:
    """(tokens through the model per document, recomputed with checkpointing) for the recipe."""
    t = w.recipe.train
    n = doc_tokens(w.doc_words_mean)
    sections = max(1, w.doc_words_mean / SECTION_WORDS)
    if t.objective in ("qa", "ctx_qa"):
        examples = PAIRS_PER_SECTION * sections
        per_example = QA_EXAMPLE_TOKENS + (CTX_WINDOW_TOKENS if t.objective == "ctx_qa" else 0)
        steps = t.max_steps or t.epochs * math.ceil(examples / t.batch_size)
        return steps * min(t.batch_size, examples) * per_example, False
    if t.ntp_format == "document":  # the whole document per step, up to max_steps (no early stop assumed)
        return (t.max_steps or t.epochs) * n, True
    chunks = max(1, n / t.chunk_tokens)
    per_chunk = (2 if t.ntp_format == "chunk_next" else 1) * t.chunk_tokens
    steps = t.max_steps or t.epochs * math.ceil(chunks / t.batch_size)
    return steps * min(t.batch_size, chunks) * per_chunk, False


def estimate(w: Workload, gpu: GPU = REFERENCE_GPU) -> Estimate:
    """GPU memory peak (GiB) and GPU hours of one workload on ``gpu`` (see the module docstring)."""
    arch = ARCHITECTURES[w.model_id]
    params = arch.parameters()
    weights = 2 * params
    kv_tok = arch.kv_bytes_per_token()
    flops_s, bytes_s = gpu.bf16_flops * MFU, gpu.bandwidth * BANDWIDTH_EFFICIENCY
    n_max = doc_tokens(w.doc_words_max) + w.prompt_tokens
    n_mean = doc_tokens(w.doc_words_mean) + w.prompt_tokens
    kept = [1 - r for r in w.rhos if r < 1]

    # memory: prefill keeps each full cache and the evicted copies (up to 3 distinct per rho); the
    # transient of one layer (MLP activations; a 256-query attention chunk of the compressor, fp32)
    caches = kv_tok * n_max * (w.prefills_per_doc + 3 * sum(kept))
    transient = n_max * (2 * arch.intermediate + 4 * arch.hidden) * 2 + 256 * n_max * arch.heads * 4
    prefill_mem = weights + caches + transient
    # decoding: the shared caches, each row's own question and answer entries, the logits (fp32)
    decode_mem = weights + caches + w.decode_batch * (64 + w.max_new_tokens) * kv_tok + w.decode_batch * arch.vocab * 4
    mem = {"prefill": prefill_mem, "decode": decode_mem}
    train_s = synth_s = 0.0
    if w.recipe.enabled:
        lora = arch.lora_parameters(w.recipe)
        tokens, checkpointed = training_tokens(w)
        t = w.recipe.train
        if checkpointed:  # one hidden state per layer kept, one layer recomputed, loss in 1,024-position chunks
            seq = n_max
            act = arch.layers * seq * arch.hidden * 2 + seq * (2 * arch.intermediate + 8 * arch.hidden) * 2 \
                + 1024 * arch.vocab * 4
        else:
            seq = QA_EXAMPLE_TOKENS + (CTX_WINDOW_TOKENS if t.objective == "ctx_qa" else 0)
            act = t.batch_size * seq * arch.layers * (3 * arch.intermediate + 10 * arch.hidden) * 2 \
                + t.batch_size * seq * arch.vocab * 4
        mem["train"] = weights + lora * (4 + 4 + 8) + act  # fp32 weights, gradients, AdamW's two moments
        # frozen base: forward 2P and backward through the activations 2P per token (+2P recomputed)
        train_s = (6 if checkpointed else 4) * params * tokens / flops_s
        if t.qa_source == "synthesize":
            calls = max(1, w.doc_words_mean / SECTION_WORDS)
            synth_prompt = 3 * SECTION_WORDS * TOKENS_PER_WORD * 2 + 300
            synth_s = calls * (prefill_flops(arch, synth_prompt) / flops_s + SYNTHESIS_TOKENS * weights / bytes_s)
            mem["synthesis"] = weights + kv_tok * (synth_prompt + (t.synthesis_max_new_tokens or 2048))
    prefill_s = w.prefills_per_doc * prefill_flops(arch, n_mean) / flops_s
    # decoding: each step reads the weights, the batch's distinct caches (one document's: up to 3
    # per rho) once, and its rows' own entries
    rows = w.questions * len(w.rhos) * w.conditions
    steps = math.ceil(rows / w.decode_batch) * w.max_new_tokens
    step_bytes = weights + kv_tok * n_mean * 3 * sum(kept) + w.decode_batch * (64 + w.max_new_tokens) * kv_tok
    decode_s = steps * step_bytes / bytes_s
    per_doc = {"synthesis": synth_s, "training": train_s, "prefill": prefill_s}
    phases = {k: v * w.docs for k, v in per_doc.items()} | {"decode": decode_s}
    return Estimate(peak_gib=max(mem.values()) / GIB, gpu_hours=sum(phases.values()) / 3600, phases_s=phases)
