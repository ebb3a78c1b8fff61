"""Stage: adapters. Turn a document into training examples (the recipe's objective), train a
peft LoRA adapter on the model, cache it on disk, and switch it on and off.

Adapters are attached with transformers' PEFT integration (``model.add_adapter`` /
``set_adapter`` / ``disable_adapters``) rather than ``peft.get_peft_model``: the model keeps
its class and module tree, so the compression hooks see the same attention modules either
way. A recipe only ever receives a :class:`~benchmark.protocol.datasets.TrainingView` (document text
and train_qa), never the evaluation questions.

Objectives:
  * ``qa``: train QA pairs in the prompt format *without* the document; loss on the answer only.
  * ``ctx_qa``: the same with the document in the prompt.
  * ``ntp``: raw next-token prediction on the document, in chunks.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import random
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..config import (  # noqa: F401 - the types live in config.py
    _BASE_MODIFYING_INITS,
    _LATER_OPTIONS,
    LORA_INITS,
    NTP_FORMATS,
    OBJECTIVES,
    QA_FORMATS,
    SCHEDULES,
    LoraSettings,
    Recipe,
    TrainSettings,
)
from ..paths import cache_dir, stable_hash
from .datasets import TrainingView
from .models import PromptRenderer

log = logging.getLogger(__name__)


def training_diverged(first_loss: float | None, final_loss: float | None) -> bool:
    """A run whose final loss is not below its first (or is not finite) learned nothing usable:
    the leaderboard flags it instead of ranking it."""
    if first_loss is None or final_loss is None:
        return False  # nothing was trained (e.g. a recipe hook returned a cached adapter's info)
    return not (math.isfinite(first_loss) and math.isfinite(final_loss)) or final_loss >= first_loss


# ---------------------------------------------------------------- examples


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss


def _answer_text(answer: str, answer_prefix: str) -> str:
    text = answer if not answer_prefix or answer_prefix[-1].isspace() or answer_prefix.endswith("{") else " " + answer
    return text + ("}" if answer_prefix.endswith("{") else "")


def qa_pairs(view: TrainingView, recipe: Recipe, model=None, tokenizer=None, model_key: str = "",
             hook=None) -> list[tuple[str, str]]:
    """The recipe's training QA pairs: a hook's (``hook(name, view)`` asks the sandbox that runs
    the submission's code), pairs synthesized from the document by the base model (the paper's
    recipe, cached per generator x document x settings), or train_qa."""
    if recipe.train.qa_source == "synthesize":
        return [(p["question"], p["answer"]) for p in _synthesized(view, recipe, model, tokenizer, model_key)]
    if recipe.train.hook:
        if hook is None:
            raise ValueError(f"the recipe's hook '{recipe.train.hook}' is submission code: it runs in the sandbox "
                             "(benchmark.trust.worker.SubmissionProcess.qa_pairs), passed here as hook=")
        return hook(recipe.train.hook, view)
    return list(view.train_qa)


#: The paper's chunk -> next chunk instruction (ntp_format: chunk_next).
CHUNK_NEXT_USER = "Here is a chunk from a document:\n\n{chunk}\n\nContinue the document with the next text."


def _synthesized(view: TrainingView, recipe: Recipe, model, tokenizer, model_key: str) -> list[dict]:
    """Synthesized pair records (``question``, ``answer``, and ``section`` with the paper's chunking)."""
    from .synthesis import cached_synthesize

    if model is None:
        raise ValueError("qa_source 'synthesize' needs the generator model")
    options = {"chunking": "paper", "parser": "paper"} if recipe.train.synthesis == "paper" else {}
    if recipe.train.synthesis_max_new_tokens is not None:
        options["max_new_tokens"] = recipe.train.synthesis_max_new_tokens
    return cached_synthesize(model, tokenizer, view.text, cache_dir=cache_dir() / "synth", generator_id=model_key,
                             batch_size=recipe.train.synthesis_batch_size, **options)


def file_name_order(n: int) -> list[int]:
    """The order in which the paper's code reads ``n`` sections back: it writes section i to
    ``<id>_chunk<i>.txt`` and lists the folder with ``sorted(glob("*.txt"))``, a string sort, so
    chunk1 is followed by chunk10, chunk100, ..., chunk11, and chunk2 comes after chunk19x."""
    return sorted(range(n), key=lambda i: f"chunk{i}.txt")


def chunk_next_chunks(text: str, train: TrainSettings, tokenizer) -> list[str]:
    """The chunks whose consecutive pairs make ``chunk_next``'s examples (``train.chunk_next_data``):
    ``tokens`` = ``chunk_tokens``-token chunks decoded; ``sections`` = the paper's synthesis sections
    (two 64-word units, overlapping by one) in document order; ``paper`` = those sections as the
    paper's code reads them back from its files (newlines as text-mode reading gives them, in
    :func:`file_name_order`), so most "next" chunks are not the section that follows."""
    if train.chunk_next_data == "tokens":
        ids = tokenizer.encode(text, add_special_tokens=False)
        n = train.chunk_tokens
        return [tokenizer.decode(ids[i:i + n]).strip() for i in range(0, len(ids), n)]
    from .synthesis import SynthesisSettings, paper_sections

    sections = paper_sections(text, SynthesisSettings().unit_words)
    if train.chunk_next_data == "paper":
        sections = [sections[i].replace("\r\n", "\n").replace("\r", "\n") for i in file_name_order(len(sections))]
    return [s.strip() for s in sections]


def _ntp_examples(view: TrainingView, recipe: Recipe, renderer: PromptRenderer) -> list[Example]:
    """ntp's three formats: ``chunks`` (raw chunks of ``chunk_tokens``, loss everywhere),
    ``document`` (the whole document as one raw sequence, the paper's raw variant), and
    ``chunk_next`` (the paper's chat variant: user = one chunk, assistant = the next chunk plus
    end of turn, loss on the assistant part only; the chunks: :func:`chunk_next_chunks`)."""
    n = recipe.train.chunk_tokens
    fmt = recipe.train.ntp_format
    if fmt in ("document", "chunks"):
        ids = renderer.doc_ids(view.text)
        if fmt == "document":
            return [Example(ids, ids)] if len(ids) > 1 else []
        return [Example(ids[i:i + n], ids[i:i + n]) for i in range(0, len(ids), n) if len(ids[i:i + n]) > 1]
    chunks = chunk_next_chunks(view.text, recipe.train, renderer.tokenizer)
    examples = []
    for cur, nxt in zip(chunks, chunks[1:]):
        if not cur or not nxt:
            continue
        prompt = renderer.chat_ids(CHUNK_NEXT_USER.format(chunk=cur))
        target = renderer.encode(nxt + renderer.end_of_turn)
        examples.append(Example(prompt + target, [-100] * len(prompt) + target))
    return examples


def build_examples(view: TrainingView, recipe: Recipe, renderer: PromptRenderer, model=None,
                   model_key: str = "", hook=None) -> list[Example]:
    """The recipe's training examples.

    QA formats (``train.qa_format``): ``spec`` = the evaluation prompt (without the document for
    ``qa``), target ``answer`` (+ ``}`` after a ``\\boxed{`` prefix) + EOS; ``paper`` = the
    paper's: ``qa`` uses the spec's no-context prompt (``Question: ...``), ``ctx_qa`` the
    evaluation prompt around its context, and the target is ``answer}.`` + the chat template's
    end of turn. ``ctx_qa``'s context is the whole document, or with ``ctx_window: neighbours``
    (the paper's) the pair's source section and one section either side."""
    tok = renderer.tokenizer
    objective = recipe.train.objective
    if objective == "ntp":
        return _ntp_examples(view, recipe, renderer)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective '{objective}' (choose from {OBJECTIVES})")
    pairs = qa_pairs(view, recipe, model, tok, model_key, hook)
    if not pairs:
        raise ValueError(
            f"document {view.doc_id}: objective '{objective}' needs train_qa pairs (or a hook) and has none"
        )
    paper = recipe.train.qa_format == "paper"
    doc_ids = renderer.doc_ids(view.text) if objective == "ctx_qa" else []
    contexts = (_neighbour_contexts(view, recipe, model, tok, model_key)
                if recipe.train.ctx_window == "neighbours" else None)
    examples = []
    for i, (q, a) in enumerate(pairs):
        if objective == "ctx_qa":
            ctx = renderer.doc_ids(contexts[i]) if contexts else doc_ids
            prompt = renderer.prefix_ids + ctx + renderer.suffix_ids(q)
        else:
            prompt = renderer.no_doc_ids(q) if paper else renderer.prefix_ids + renderer.suffix_ids(q)
        if paper:
            target = renderer.encode(a + "}." + renderer.end_of_turn)
        else:
            target = (tok.encode(_answer_text(a, renderer.prompt.answer_prefix), add_special_tokens=False)
                      + [tok.eos_token_id])
        examples.append(Example(prompt + target, [-100] * len(prompt) + target))
    return examples


def _neighbour_contexts(view: TrainingView, recipe: Recipe, model, tokenizer, model_key: str) -> list[str]:
    """Per synthesized pair (same order as :func:`qa_pairs`): its section +/- one section."""
    from .synthesis import SynthesisSettings, paper_sections, section_context

    sections = paper_sections(view.text, SynthesisSettings().unit_words)
    return [section_context(sections, r["section"], 1) for r in _synthesized(view, recipe, model, tokenizer, model_key)]


# ---------------------------------------------------------------- train / cache / switch


def adapter_key(model_key: str, view: TrainingView, recipe: Recipe, spec_version: str) -> str:
    doc = stable_hash({"text": view.text, "train_qa": view.train_qa}, 64)
    return stable_hash({"model": model_key, "doc": doc, "recipe": recipe.fingerprint(), "spec": spec_version}, 24)


def _batches(examples: list[Example], batch_size: int, rng: random.Random):
    order = list(range(len(examples)))
    rng.shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [examples[j] for j in order[i:i + batch_size]]


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int, device):
    """Right-padded (input_ids, labels, attention_mask) tensors; padding carries no loss."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (i, lab) in enumerate(rows):
        ids[b, :len(i)] = torch.tensor(i)
        labels[b, :len(i)] = torch.tensor(lab)
        mask[b, :len(i)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def shared_prefix_len(batch: list[Example]) -> int:
    """Leading tokens that every example in the batch shares and that no loss reads.

    The loss on token t is read from the logits at t - 1, so the shared part stops before the
    position just ahead of the first labelled token; every example keeps at least one token."""
    first_label = min(next((i for i, lab in enumerate(e.labels) if lab != -100), len(e.labels)) for e in batch)
    limit = min(first_label - 1, min(len(e.input_ids) for e in batch) - 1)
    ref, k = batch[0].input_ids, 0
    while k < limit and all(e.input_ids[k] == ref[k] for e in batch):
        k += 1
    return k


#: Positions whose logits are formed at once by :func:`chunked_lm_loss` (at a 152k vocabulary, 0.6 GB in float32).
LOGIT_CHUNK = 1024


def _chunk_ce_sum(head: torch.nn.Module, hidden: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(head(hidden).float(), gold, reduction="sum")


def chunked_lm_loss(model, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                    chunk: int = LOGIT_CHUNK) -> torch.Tensor:
    """The causal-LM loss of ``model(ids, attention_mask=mask, labels=labels)`` (mean over labelled
    tokens, logits in float32) without the [positions, vocab] logits tensor: the decoder's hidden
    states go through the output head ``chunk`` labelled positions at a time, each chunk under
    activation checkpointing, so backward keeps only the hidden states and recomputes each chunk's
    logits. On a whole raw document (ntp_format document) the full logits would be the largest
    tensor of the step. Loss and gradients equal the plain computation's up to rounding
    (``tests/test_paper_tier.py``)."""
    from torch.utils.checkpoint import checkpoint

    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    gold = labels[:, 1:]
    keep = gold != -100
    h, gold = hidden[:, :-1][keep], gold[keep]  # token t is predicted by the hidden state at t - 1
    head = model.get_output_embeddings()
    total = sum(checkpoint(_chunk_ce_sum, head, h[i:i + chunk], gold[i:i + chunk], use_reentrant=False)
                for i in range(0, len(gold), chunk))
    return total / len(gold)


def batch_loss(model, batch: list[Example], pad_id: int, share_prefix: bool = True,
               chunk_logits: bool = False) -> tuple[torch.Tensor, int]:
    """Mean answer-token loss of one batch, and the number of tokens the forward pass ran.

    Every QA example starts with the same chat prefix (about 60% of a short example). With
    ``share_prefix`` the batch runs as one packed sequence, ``prefix | rest_1 | ... | rest_B``,
    under a tree-shaped attention mask: each ``rest_b`` attends to the prefix and causally to
    itself, at the positions it would have in its own example. No padding, the prefix once,
    and logits only where a loss is read. The loss and gradients equal those of the plain
    padded batch (the prefix's hidden states are the same in every example; autograd sums what
    flows back into the one copy), up to floating-point rounding: ``tests/test_adapters.py``.
    ``chunk_logits``: the plain batch's loss by :func:`chunked_lm_loss`."""
    k = shared_prefix_len(batch) if share_prefix and len(batch) > 1 else 0
    if k < 2:  # nothing worth sharing (ntp chunks): the plain padded batch
        ids, labels, mask = _collate([(e.input_ids, e.labels) for e in batch], pad_id, model.device)
        if chunk_logits:
            return chunked_lm_loss(model, ids, labels, mask), int(mask.sum())
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss, int(mask.sum())
    ids, positions, read_at, targets = list(batch[0].input_ids[:k]), list(range(k)), [], []
    blocks = []
    for e in batch:
        start = len(ids)
        ids += e.input_ids[k:]
        positions += range(k, len(e.input_ids))
        blocks.append((start, len(ids)))
        for j in range(k + 1, len(e.input_ids)):
            if e.labels[j] != -100:  # token j is predicted by the logits at j - 1
                read_at.append(start + j - k - 1)
                targets.append(e.labels[j])
    n = len(ids)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:, :k] = True  # everything sees the prefix
    for start, end in blocks:
        allowed[start:end, start:end] = True  # each example's rest sees itself, not the others
    allowed &= torch.ones(n, n, dtype=torch.bool).tril()  # causal
    dev = model.device
    logits = model(input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([positions], device=dev),
                   attention_mask=allowed[None, None].to(dev), logits_to_keep=torch.tensor(read_at, device=dev)).logits
    loss = torch.nn.functional.cross_entropy(logits[0].float(), torch.tensor(targets, device=dev))
    return loss, n


#: The paper's shared A matrices, kept with the model they were computed from (see :func:`shared_a_matrices`).
_SHARED_A: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: The seed the paper's code sets before its shared-A computation.
SHARED_A_SEED = 42


def _lora_layers(model, name: str) -> list[tuple[str, torch.nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer) and name in m.lora_A]


def shared_a_matrices(model, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s shared A per LoRA layer (module name -> float16 (r, d_in)), as the paper's
    code computes it: seed 42, then for each target weight in module order (layer by layer),
    ``torch.svd_lowrank(W, q=r, niter=4)`` on the weight read in bf16 (the paper loads the model in
    bf16 for it) as float32; A = ``V^T`` (the top-r right singular vectors, not scaled), stored float16.

    The randomised SVD draws from one seeded stream across all layers, so a layer's A depends on the
    layers before it: the whole set is computed at once. The paper computes it once per model and
    reuses it for every document; so does this, cached with the model under its LoRA layers' names,
    ranks and base weights (storage, shape, in-place version). The seed is set in a forked RNG, so
    the caller's random streams are untouched."""
    layers = _lora_layers(model, name)
    if not layers:
        raise RuntimeError(f"shared_svd_a: adapter '{name}' has no LoRA layers")
    weights = [(n, m.lora_A[name].weight.shape[0], m.get_base_layer().weight) for n, m in layers]
    key = tuple((n, r, w.data_ptr(), tuple(w.shape), w.dtype, str(w.device), w._version) for n, r, w in weights)
    cache = _SHARED_A.setdefault(model, {})
    if key not in cache:
        out = {}
        with _forked_rng(weights[0][2].device):
            torch.manual_seed(SHARED_A_SEED)
            for n, r, w in weights:
                _, _, v = torch.svd_lowrank(w.detach().to(torch.bfloat16).float(), q=r, niter=4)
                out[n] = v.T.contiguous().to(torch.float16)
        cache[key] = out
    return cache[key]


def init_shared_svd_a(model, name: str) -> int:
    """Set adapter ``name``'s A of every LoRA layer to the paper's shared A (:func:`shared_a_matrices`:
    the top-r right singular vectors of its base weight, shape (r, d_in), by a seeded randomised SVD,
    float16) and freeze it; B stays 0, so the adapter starts as a no-op.

    The paper's shared-A init: A depends only on the base weights, so it is the same matrix for
    every document (only B is trained per document). Unlike peft's PiSSA, the base weight is read,
    never rewritten, so the base conditions stay the base model. Returns the number of layers set."""
    shared = shared_a_matrices(model, name)
    for n, module in _lora_layers(model, name):
        a = module.lora_A[name].weight
        if not torch.equal(module.lora_B[name].weight, torch.zeros_like(module.lora_B[name].weight)):
            raise RuntimeError("shared_svd_a needs B = 0 (peft's gaussian init)")
        with torch.no_grad():
            a.copy_(shared[n].to(a.dtype))
        a.requires_grad_(False)
    return len(shared)


def _schedule(opt, s: TrainSettings, total_steps: int):
    """transformers' schedulers, as its Trainer builds them: linear warmup of
    ceil(warmup_ratio * total) steps, then constant or cosine decay to 0."""
    import math

    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    warmup = math.ceil(s.warmup_ratio * total_steps)
    if s.schedule == "cosine":
        return get_cosine_schedule_with_warmup(opt, warmup, total_steps)
    return get_constant_schedule_with_warmup(opt, warmup)


def _token_accuracy(model, batch: list[Example], pad_id: int) -> tuple[int, int]:
    """(correct, total) greedy next-token predictions on the labelled tokens, as the paper's trainer
    logs ``mean_token_accuracy`` (an extra no-grad forward; only run when early stopping is on)."""
    ids, labels, mask = _collate([(e.input_ids, e.labels) for e in batch], pad_id, model.device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    pred, gold = logits[:, :-1].argmax(-1), labels[:, 1:]
    valid = gold != -100
    return int((pred.eq(gold) & valid).sum()), int(valid.sum())


@dataclass
class PaperEarlyStop:
    """The paper's NTP early stop (``early_stop: paper``), as its trainer runs it: the token accuracy
    is logged at step 1 and every ``every`` steps, each log over the steps since the previous one;
    logs before step ``min_step`` are not counted; training stops at the log that makes
    ``patience`` consecutive counted logs reach ``threshold``."""

    threshold: float
    every: int = 10
    min_step: int = 50
    patience: int = 2
    hits: int = 0
    correct: int = 0
    total: int = 0

    def _logs_at(self, step: int) -> bool:
        return step == 1 or step % self.every == 0

    def wants_accuracy(self, step: int) -> bool:
        """Whether step ``step``'s accuracy is read by a counted log (earlier steps need no forward)."""
        first_counted = -(-self.min_step // self.every) * self.every
        return step > first_counted - self.every

    def after_step(self, step: int, correct: int, total: int) -> bool:
        """Add step ``step``'s (correct, total); True when training stops here."""
        self.correct, self.total = self.correct + correct, self.total + total
        if not self._logs_at(step):
            return False
        acc = self.correct / self.total if self.total else None
        self.correct = self.total = 0
        if step < self.min_step or acc is None:
            return False
        self.hits = self.hits + 1 if acc >= self.threshold else 0
        return self.hits >= self.patience


@contextlib.contextmanager
def direct_dora_lora_weight():
    """Within the block, peft's DoRA layers form their update ``B @ A`` directly.

    peft builds it as ``lora_B(lora_A(eye(d_in))).T`` (so that FSDP-wrapped layers work), and in
    training mode it does so at every forward, uncached: for Qwen2.5-0.5B's ``down_proj``
    (d_in = 4864) that allocates and fills a 4864 x 4864 identity, 24 times per forward. The
    product is the same matrix (outputs and gradients equal peft's on a tiny model:
    ``tests/test_adapters.py``) at a 20-25x lower cost per layer (a one-layer timing in
    ``docs/performance.md``; ``perf/dora_step.py`` times whole steps). Layers whose A or B is
    not a plain ``nn.Linear`` keep peft's way. peft's method is restored on exit."""
    from peft.tuners.lora import dora

    original = dora.DoraLinearLayer.get_lora_weight

    @dora.cache_decorator("lora-weight")  # cached like peft's own under DoraCaching (evaluation)
    def get_lora_weight(self, lora_A, lora_B, adapter_name=None):
        if type(lora_A) is torch.nn.Linear and type(lora_B) is torch.nn.Linear:
            return lora_B.weight @ lora_A.weight
        return original.__wrapped__(self, lora_A, lora_B, adapter_name=adapter_name)

    dora.DoraLinearLayer.get_lora_weight = get_lora_weight
    try:
        yield
    finally:
        dora.DoraLinearLayer.get_lora_weight = original


#: Base-model dtypes whose adapters train in mixed precision (see :func:`train_adapter`).
HALF_DTYPES = (torch.bfloat16, torch.float16)


def _forked_rng(device: torch.device):
    """The global RNGs training draws from (CPU, and the model's CUDA devices), restored on exit, so
    seeding a training run leaves the caller's random streams where they were."""
    cuda = range(torch.cuda.device_count()) if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def cast_adapter(model, name: str, dtype: torch.dtype) -> int:
    """Cast every floating parameter of adapter ``name`` (LoRA A/B, DoRA magnitude) to ``dtype`` in
    place, leaving the base weights alone; returns how many changed dtype.

    peft's ``cast_adapter_dtype`` only upcasts to float32; this is its inverse, for evaluating an
    adapter in the base model's dtype."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    n = 0
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for holder in module.modules():
            if not isinstance(holder, (torch.nn.ModuleDict, torch.nn.ParameterDict)) or name not in holder:
                continue
            for p in (holder[name].parameters() if isinstance(holder[name], torch.nn.Module) else [holder[name]]):
                if p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)
                    n += 1
    return n


def train_adapter(model, name: str, examples: list[Example], recipe: Recipe, pad_id: int, progress: bool = True,
                  share_prefix: bool = True) -> dict:
    """Attach a fresh LoRA adapter ``name`` and train it; only LoRA weights get gradients
    (not A under ``init: shared_svd_a``, which stays the frozen shared matrix).

    On a bf16 (or fp16) base model the adapter trains in mixed precision, as the paper's code does
    (peft's ``PeftModel`` upcasts adapter weights to float32; transformers' Trainer with ``bf16=True``
    runs the forward under autocast): the adapter's weights are float32 while training, forward
    passes run under ``torch.autocast`` in the base dtype, and AdamW steps the float32 weights.
    Stepping bf16 weights instead loses every update below half a bf16 step of the weight (at
    lr 1e-4 the DoRA magnitude never moves). After training the adapter is cast to the base dtype,
    as the paper's evaluation does (``model.to(dtype=...)`` on its ``PeftModel``): what is cached and
    evaluated is the base-dtype adapter, and a cached one loads to the same weights. A float32 base
    takes none of these steps. (An fp16 base trains without the loss scaling transformers' Trainer adds.)

    Training seeds torch's global RNG inside a fork, so the caller's RNG state is unchanged.

    ``tokens`` counts the examples' tokens (what the recipe trains on); ``forward_tokens`` counts
    what the forward passes actually ran after prefix sharing (see :func:`batch_loss`)."""
    with _forked_rng(model.device):
        return _train_adapter(model, name, examples, recipe, pad_id, progress, share_prefix)


def _checkpoint_activations(model, s: TrainSettings) -> bool:
    """Whether training runs with transformers' gradient checkpointing: a whole raw document
    (ntp_format document) on CUDA, as the paper's trainer does (``gradient_checkpointing=True``), where
    a long document's activations would not fit otherwise. Elsewhere the examples are short and the
    checkpointing would only cost a second forward."""
    return model.device.type == "cuda" and s.objective == "ntp" and s.ntp_format == "document"


@contextlib.contextmanager
def _gradient_checkpointing(model, on: bool):
    if not on:
        yield
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        model.gradient_checkpointing_disable()


def _train_adapter(model, name: str, examples: list[Example], recipe: Recipe, pad_id: int, progress: bool,
                   share_prefix: bool) -> dict:
    s = recipe.train
    chunk_logits = s.objective == "ntp" and s.ntp_format == "document"  # one long sequence: no [seq, vocab] logits
    half = model.dtype if model.dtype in HALF_DTYPES else None  # the base's dtype, read before an adapter exists
    torch.manual_seed(s.seed)
    model.add_adapter(recipe.lora.peft_config(), adapter_name=name)
    model.set_adapter(name)
    if half is not None:
        from peft.functional import cast_adapter_dtype

        cast_adapter_dtype(model, name)  # float32 adapter weights (replaces the parameter objects)
    frozen_a = recipe.lora.init == "shared_svd_a"
    if frozen_a:
        init_shared_svd_a(model, name)
    params = []
    for pname, p in model.named_parameters():
        mine = f".{name}." in pname or pname.endswith(f".{name}")
        p.requires_grad_(mine and not (frozen_a and ".lora_A." in pname))
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    # Only the forward runs under autocast; backward follows the dtypes the forward chose.
    autocast = (lambda: torch.autocast(model.device.type, dtype=half)) if half is not None else contextlib.nullcontext
    rng = random.Random(s.seed)
    model.train()
    n_tokens, n_forward, t0, losses = 0, 0, time.perf_counter(), []
    steps = s.epochs * ((len(examples) + s.batch_size - 1) // s.batch_size) if s.max_steps is None else s.max_steps
    sched = _schedule(opt, s, steps)
    # The paper's early stop checks the token accuracy accumulated between its trainer's log
    # events, about ten per run; a stop takes effect at a check.
    check_every = max(1, steps // 10)
    correct = total = 0
    paper_stop = (PaperEarlyStop(s.early_stop_accuracy)
                  if s.early_stop_accuracy is not None and s.early_stop == "paper" else None)
    stopped_early = False
    bar = tqdm(total=steps, desc=f"train {name}", leave=False, disable=not progress)
    try:
        # DoRA's update without a d_in x d_in identity per forward
        with direct_dora_lora_weight(), _gradient_checkpointing(model, _checkpoint_activations(model, s)):
            for _ in range(s.epochs) if s.max_steps is None else itertools.count():
                for batch in _batches(examples, s.batch_size, rng):
                    if len(losses) >= steps:
                        break
                    if paper_stop is not None:
                        c = t = 0
                        if paper_stop.wants_accuracy(len(losses) + 1):
                            # The paper reads the accuracy off the training forward itself: the same
                            # forward, in a forked RNG, draws the dropout masks the training forward
                            # then draws, and leaves the training's random stream where it was.
                            with _forked_rng(model.device), autocast():
                                c, t = _token_accuracy(model, batch, pad_id)
                    elif s.early_stop_accuracy is not None:  # on the weights this step's loss is computed with
                        with autocast():
                            c, t = _token_accuracy(model, batch, pad_id)
                        correct, total = correct + c, total + t
                    with autocast():
                        loss, ran = (batch_loss(model, batch, pad_id, share_prefix, chunk_logits=True) if chunk_logits
                                     else batch_loss(model, batch, pad_id, share_prefix))
                    loss.backward()
                    if s.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    losses.append(loss.item())
                    n_tokens += sum(len(e.input_ids) for e in batch)
                    n_forward += ran
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                    if paper_stop is not None:
                        if paper_stop.after_step(len(losses), c, t):
                            stopped_early = True
                            break
                    elif s.early_stop_accuracy is not None and len(losses) % check_every == 0:
                        if total and correct / total >= s.early_stop_accuracy:
                            stopped_early = True
                            break
                        correct = total = 0
                if stopped_early or len(losses) >= steps:
                    break
    finally:
        bar.close()
        model.eval()
        for p in params:
            p.requires_grad_(False)
        if half is not None:
            cast_adapter(model, name, half)
    seconds = time.perf_counter() - t0
    info = {"steps": len(losses), "tokens": n_tokens, "forward_tokens": n_forward, "seconds": seconds,
            "tokens_per_s": n_tokens / max(seconds, 1e-9),
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None}
    if s.early_stop_accuracy is not None:
        info["stopped_early"] = stopped_early
    return info


def set_eval_scale(model, name: str, scale: float) -> None:
    if scale == 1.0:
        return
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            module.scale_layer(scale)


class AdapterStore:
    """Train-once, load-after adapters under ``$LORAKV_CACHE/adapters/<key>/``.

    Each entry is a folder in peft's ``save_pretrained`` format (``adapter_config.json`` +
    ``adapter_model.safetensors``, keys under ``base_model.model.``), so any cached adapter opens
    with ``PeftModel.from_pretrained(base_model, path)`` or ``model.load_adapter(path)``; beside
    them, ``train_info.json`` keeps the training record. The saved config's ``lora_alpha`` folds in
    ``eval_scale``, so peft applies exactly the update the benchmark evaluated (on a bf16 base the
    weights are bf16, as evaluated; pass ``autocast_adapter_dtype=False`` to keep peft from
    upcasting them). Entries written before this format (weights without a config) are rewritten
    in place when first loaded.
    """

    WEIGHTS, CONFIG, PREFIX = "adapter_model.safetensors", "adapter_config.json", "base_model.model."

    def __init__(self, root: Path | None = None):
        self.root = root or cache_dir() / "adapters"

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.path(key) / self.WEIGHTS).exists()

    @classmethod
    def _write_peft_folder(cls, folder: Path, state: dict, recipe: Recipe, base_name: str | None) -> None:
        config = recipe.lora.peft_config()
        config.lora_alpha = recipe.lora.alpha * recipe.lora.eval_scale
        config.base_model_name_or_path = base_name
        config.save_pretrained(str(folder))
        save_file({cls.PREFIX + k: v for k, v in state.items()}, str(folder / cls.WEIGHTS), metadata={"format": "pt"})

    def attach(self, model, name: str, key: str, recipe: Recipe, examples_fn, pad_id: int, progress=True) -> dict:
        """Attach adapter ``name`` to the model: loaded from cache if present, else trained and saved.

        Processes that need the same key (two submissions sharing a recipe, run at once) take turns
        on an exclusive lock per key: the first trains and saves, the others then load its adapter.
        The adapter is written into a folder unique to this process and renamed into place."""
        import shutil
        import tempfile

        from .results import file_lock

        d = self.path(key)
        base_name = getattr(getattr(model, "config", None), "name_or_path", None) or None
        with file_lock(d):
            if self.has(key):
                state = _load_state(model, name, d, recipe)
                if not (d / self.CONFIG).exists():  # an entry from before the peft format: rewrite it once
                    self._write_peft_folder(d, state, recipe, base_name)
                info = json.loads((d / "train_info.json").read_text())
                info["cached"] = True
            else:
                info = train_adapter(model, name, examples_fn(), recipe, pad_id, progress=progress)
                state = {k: v.detach().cpu().contiguous()
                         for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
                self.root.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f"{d.name}.tmp-", dir=self.root))
                try:
                    self._write_peft_folder(tmp, state, recipe, base_name)
                    info["bytes"] = sum(v.numel() * v.element_size() for v in state.values())
                    info["recipe"] = recipe.fingerprint()
                    (tmp / "train_info.json").write_text(json.dumps(info, indent=1, default=str))
                    if d.exists():  # a folder without weights: an interrupted save of an older version
                        shutil.rmtree(d)
                    tmp.rename(d)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                info["cached"] = False
        set_eval_scale(model, name, recipe.lora.eval_scale)
        model.set_adapter(name)
        return info


def _load_state(model, name: str, folder: Path, recipe: Recipe) -> dict:
    model.add_adapter(recipe.lora.peft_config(), adapter_name=name)
    state = {k.removeprefix(AdapterStore.PREFIX): v for k, v in load_file(str(folder / AdapterStore.WEIGHTS)).items()}
    set_peft_model_state_dict(model, state, adapter_name=name)
    model.eval()  # add_adapter makes its LoRA modules in training mode, LoRA dropout live (see in_training_mode)
    return state


def attach_saved(model, name: str, folder: Path, recipe: Recipe) -> None:
    """Attach the adapter an :class:`AdapterStore` saved in ``folder`` exactly as ``attach`` does
    (the sandbox scores with the adapter the harness trained and hands it)."""
    _load_state(model, name, folder, recipe)
    set_eval_scale(model, name, recipe.lora.eval_scale)
    model.set_adapter(name)


def in_training_mode(model) -> list[str]:
    """The model's modules left in training mode (dropout live), by name; evaluation needs none.

    ``model.add_adapter`` builds its LoRA modules in training mode whatever the model's mode, so
    an adapter loaded without ``model.eval()`` evaluates with LoRA dropout on: different tokens
    on every run of a recipe with ``lora.dropout > 0``."""
    return [n or "(the model)" for n, m in model.named_modules() if m.training]


@contextlib.contextmanager
def adapter_state(model, on: bool):
    """Adapters enabled (``on``) or disabled for the duration of the block."""
    if not getattr(model, "_hf_peft_config_loaded", False):
        if on:
            raise RuntimeError("no adapter attached")
        yield
        return
    if on:
        model.enable_adapters()
    else:
        model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()


def detach_adapter(model, name: str) -> None:
    model.delete_adapter(name)
