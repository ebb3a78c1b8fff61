"""Stage: adapters. Turn a document into training examples (the recipe's objective), train a
peft LoRA adapter on the model, cache it on disk, and switch it on and off.

Adapters are attached with transformers' PEFT integration (``model.add_adapter`` /
``set_adapter`` / ``disable_adapters``) rather than ``peft.get_peft_model``: the model keeps
its class and module tree, so the compression hooks see the same attention modules either
way. A recipe only ever receives a :class:`~benchmark.datasets.TrainingView` (document text
and train_qa), never the evaluation questions.

Objectives:
  * ``qa``: train QA pairs in the prompt format *without* the document; loss on the answer only.
  * ``ctx_qa``: the same with the document in the prompt.
  * ``ntp``: raw next-token prediction on the document, in chunks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .datasets import TrainingView
from .models import PromptRenderer
from .paths import cache_dir, import_from, stable_hash

log = logging.getLogger(__name__)

OBJECTIVES = ("qa", "ctx_qa", "ntp")
#: Training options added after adapters were first cached: part of the fingerprint only when set,
#: so existing cache keys (and committed results' adapter keys) stay valid.
_LATER_OPTIONS = {"qa_source": "train_qa"}
#: LoRA inits that rewrite the base weights: the base conditions would no longer be the base model.
_BASE_MODIFYING_INITS = ("pissa", "olora", "corda", "loftq")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    use_dora: bool = False
    init: str = "default"  # "default" (kaiming A, zero B) or "gaussian"
    eval_scale: float = 1.0  # multiplies the LoRA update at evaluation time

    def peft_config(self) -> LoraConfig:
        if self.init.split("_")[0].lower() in _BASE_MODIFYING_INITS:
            raise ValueError(
                f"lora.init '{self.init}' rewrites the base weights, which would change the base-model "
                "conditions; use 'default' or 'gaussian'"
            )
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=list(self.target_modules),
            use_dora=self.use_dora, init_lora_weights=True if self.init == "default" else self.init, bias="none",
        )


@dataclass(frozen=True)
class TrainSettings:
    objective: str = "qa"
    lr: float = 1e-3
    epochs: int = 6
    batch_size: int = 8
    weight_decay: float = 0.0
    seed: int = 0
    chunk_tokens: int = 128  # ntp only
    hook: str | None = None  # "module:function" (TrainingView) -> list[{"question","answer"}] for qa/ctx_qa
    qa_source: str = "train_qa"  # qa/ctx_qa: the document's train_qa, or "synthesize" (the paper's LLM recipe)


@dataclass(frozen=True)
class Recipe:
    """An adapter recipe; ``name == "none"`` means no adapter (only the base condition runs)."""

    name: str
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    code_dir: str | None = None

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def fingerprint(self) -> dict:
        train = {k: v for k, v in self.train.__dict__.items() if not (k in _LATER_OPTIONS and v == _LATER_OPTIONS[k])}
        fp = {"lora": self.lora.__dict__, "train": train}
        if self.train.hook and self.code_dir:  # the hook's source is part of the recipe
            mod = self.train.hook.split(":")[0].replace(".", "/") + ".py"
            src = Path(self.code_dir) / mod
            fp["hook_source"] = stable_hash(src.read_text()) if src.exists() else None
        return fp

    def hash(self) -> str:
        return stable_hash(self.fingerprint())


# ---------------------------------------------------------------- examples


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss


def _answer_text(answer: str, answer_prefix: str) -> str:
    text = answer if not answer_prefix or answer_prefix[-1].isspace() or answer_prefix.endswith("{") else " " + answer
    return text + ("}" if answer_prefix.endswith("{") else "")


def qa_pairs(view: TrainingView, recipe: Recipe, model=None, tokenizer=None, model_key: str = "") -> list[tuple[str, str]]:
    """The recipe's training QA pairs: a hook's, pairs synthesized from the document by the base
    model (the paper's recipe, cached per generator x document x settings), or train_qa."""
    if recipe.train.qa_source == "synthesize":
        from .synthesis import cached_synthesize

        if model is None:
            raise ValueError("qa_source 'synthesize' needs the generator model")
        pairs = cached_synthesize(model, tokenizer, view.text, cache_dir=cache_dir() / "synth", generator_id=model_key)
        return [(p["question"], p["answer"]) for p in pairs]
    if recipe.train.hook:
        fn = import_from(recipe.code_dir, recipe.train.hook)
        return [(p["question"], p["answer"]) for p in fn(view)]
    return list(view.train_qa)


def build_examples(view: TrainingView, recipe: Recipe, renderer: PromptRenderer, model=None,
                   model_key: str = "") -> list[Example]:
    tok = renderer.tokenizer
    objective = recipe.train.objective
    if objective == "ntp":
        ids = renderer.doc_ids(view.text)
        n = recipe.train.chunk_tokens
        return [Example(ids[i:i + n], ids[i:i + n]) for i in range(0, len(ids), n) if len(ids[i:i + n]) > 1]
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective '{objective}' (choose from {OBJECTIVES})")
    pairs = qa_pairs(view, recipe, model, tok, model_key)
    if not pairs:
        raise ValueError(f"document {view.doc_id}: objective '{objective}' needs train_qa pairs (or a hook) and has none")
    doc_ids = renderer.doc_ids(view.text) if objective == "ctx_qa" else []
    examples = []
    for q, a in pairs:
        prompt = renderer.prefix_ids + doc_ids + renderer.suffix_ids(q)
        target = tok.encode(_answer_text(a, renderer.prompt.answer_prefix), add_special_tokens=False) + [tok.eos_token_id]
        examples.append(Example(prompt + target, [-100] * len(prompt) + target))
    return examples


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


def batch_loss(model, batch: list[Example], pad_id: int, share_prefix: bool = True) -> tuple[torch.Tensor, int]:
    """Mean answer-token loss of one batch, and the number of tokens the forward pass ran.

    Every QA example starts with the same chat prefix (about 60% of a short example). With
    ``share_prefix`` the batch runs as one packed sequence, ``prefix | rest_1 | ... | rest_B``,
    under a tree-shaped attention mask: each ``rest_b`` attends to the prefix and causally to
    itself, at the positions it would have in its own example. No padding, the prefix once,
    and logits only where a loss is read. The loss and gradients equal those of the plain
    padded batch (the prefix's hidden states are the same in every example; autograd sums what
    flows back into the one copy), up to floating-point rounding: ``tests/test_adapters.py``."""
    k = shared_prefix_len(batch) if share_prefix and len(batch) > 1 else 0
    if k < 2:  # nothing worth sharing (ntp chunks): the plain padded batch
        ids, labels, mask = _collate([(e.input_ids, e.labels) for e in batch], pad_id, model.device)
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


def train_adapter(model, name: str, examples: list[Example], recipe: Recipe, pad_id: int, progress: bool = True,
                  share_prefix: bool = True) -> dict:
    """Attach a fresh LoRA adapter ``name`` and train it; only LoRA weights get gradients.

    ``tokens`` counts the examples' tokens (what the recipe trains on); ``forward_tokens`` counts
    what the forward passes actually ran after prefix sharing (see :func:`batch_loss`)."""
    s = recipe.train
    torch.manual_seed(s.seed)
    model.add_adapter(recipe.lora.peft_config(), adapter_name=name)
    model.set_adapter(name)
    params = []
    for pname, p in model.named_parameters():
        p.requires_grad_(f".{name}." in pname or pname.endswith(f".{name}"))
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    rng = random.Random(s.seed)
    model.train()
    n_tokens, n_forward, t0, losses = 0, 0, time.perf_counter(), []
    steps = s.epochs * ((len(examples) + s.batch_size - 1) // s.batch_size)
    bar = tqdm(total=steps, desc=f"train {name}", leave=False, disable=not progress)
    try:
        for _ in range(s.epochs):
            for batch in _batches(examples, s.batch_size, rng):
                loss, ran = batch_loss(model, batch, pad_id, share_prefix)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
                n_tokens += sum(len(e.input_ids) for e in batch)
                n_forward += ran
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        bar.close()
        model.eval()
        for p in params:
            p.requires_grad_(False)
    seconds = time.perf_counter() - t0
    return {"steps": len(losses), "tokens": n_tokens, "forward_tokens": n_forward, "seconds": seconds,
            "tokens_per_s": n_tokens / max(seconds, 1e-9),
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None}


def set_eval_scale(model, name: str, scale: float) -> None:
    if scale == 1.0:
        return
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            module.scale_layer(scale)


class AdapterStore:
    """Train-once, load-after adapters under ``$LORAKV_CACHE/adapters/<key>/``."""

    def __init__(self, root: Path | None = None):
        self.root = root or cache_dir() / "adapters"

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.path(key) / "adapter_model.safetensors").exists()

    def attach(self, model, name: str, key: str, recipe: Recipe, examples_fn, pad_id: int, progress=True) -> dict:
        """Attach adapter ``name`` to the model: loaded from cache if present, else trained and saved.

        Processes that need the same key (two submissions sharing a recipe, run at once) take turns
        on an exclusive lock per key: the first trains and saves, the others then load its adapter.
        The adapter is written into a folder unique to this process and renamed into place."""
        from .results import file_lock

        d = self.path(key)
        with file_lock(d):
            if self.has(key):
                model.add_adapter(recipe.lora.peft_config(), adapter_name=name)
                set_peft_model_state_dict(model, load_file(str(d / "adapter_model.safetensors")), adapter_name=name)
                info = json.loads((d / "train_info.json").read_text())
                info["cached"] = True
            else:
                import shutil
                import tempfile

                info = train_adapter(model, name, examples_fn(), recipe, pad_id, progress=progress)
                state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
                tmp = Path(tempfile.mkdtemp(prefix=f"{d.name}.tmp-", dir=self.root))
                try:
                    save_file(state, str(tmp / "adapter_model.safetensors"))
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
