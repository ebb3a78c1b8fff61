"""Configuration types, free of torch: what a submission, a recipe and a spec are made of.

Reading a ``submission.yaml`` or a spec needs only these (and ``yaml`` / ``jsonschema``), never the
training or model code, so ``benchmark.config`` and ``benchmark.protocol.submission`` import without torch
or peft (``tests/test_config.py`` checks it in a fresh process). Each list of allowed values lives
here once; where a JSON Schema repeats one as an ``enum``, ``tests/test_config.py`` checks they are
equal. The condition names are not repeated: the schemas refer to ``$defs/condition``, which
``benchmark.protocol.spec.load_schema`` fills in from :data:`CONDITIONS`. ``adapters.py`` and ``spec.py``
re-export these names, so their old imports keep working.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from .paths import folder_files, stable_hash

TIERS = ("mini", "paper", "paper-rehearsal")
#: Derived tiers: each is the named tier's spec with the overrides of its own spec file laid over it
#: (``specs/paper-rehearsal.yaml``: the paper tier on a CPU with stand-in models and fixture data).
REHEARSED_TIERS = {"paper-rehearsal": "paper"}
#: a dataset's splits; results name the split in the file name unless it is the first (test)
SPLITS = ("test", "dev")
#: How the decode puts rows into batches (``generation.greedy_decode``; a result records it in
#: ``environment.batching``, and one without it was decoded :data:`UNRECORDED_BATCHING`). In float32
#: on the CPU a row's answer does not depend on the rows beside it, so both give the same answers; in bfloat16
#: it can, so verify re-runs a result in its own scheme.
#:   cache:  longest cache first; every row stays in its batch until the batch's last row stops
#:   suffix: shortest question suffix first (then longest cache first), so that a batch's questions
#:           are left-padded by a token or two rather than to the document's longest question; a row
#:           that has stopped leaves the batch
BATCHINGS = ("cache", "suffix")
BATCHING = "suffix"  # what runs now
UNRECORDED_BATCHING = "cache"  # what a result without environment.batching was decoded in
#: the datasets of the paper tier that ``prepare-data`` converts (the paper spec's dataset ids; a test checks)
PAPER_DATASETS = ("narrativeqa", "longhealth")

#: The four conditions as data: which weights prefill the document, which pick the kept
#: entries (score), which decode the question and answer. "adapter" = base + document LoRA.
CONDITIONS: dict[str, dict[str, str]] = {
    "base": {"prefill": "base", "score": "base", "decode": "base"},
    "adapter_all": {"prefill": "adapter", "score": "adapter", "decode": "adapter"},
    "base_kv_adapter_decode": {"prefill": "base", "score": "base", "decode": "adapter"},
    "base_score_adapter_prefill": {"prefill": "adapter", "score": "base", "decode": "adapter"},
}
CONDITION_NAMES = tuple(CONDITIONS)
BASE, ADAPTER_ALL, BASE_KV_ADAPTER_DECODE, BASE_SCORE_ADAPTER_PREFILL = CONDITION_NAMES
#: the headline condition of a submission with an adapter, unless it names another
DEFAULT_ADAPTER_HEADLINE = BASE_KV_ADAPTER_DECODE
CONDITION_HELP = {
    "base": "no adapter anywhere (KV-only)",
    "adapter_all": "adapter on for prefill, scoring and decoding",
    "base_kv_adapter_decode": "base prefill and scoring; adapter only for question and answer",
    "base_score_adapter_prefill": "base scoring picks the kept entries of an adapter prefill; adapter decodes",
}



def uses_adapter(condition: str) -> bool:
    """Whether ``condition`` puts the document's adapter anywhere (every condition but ``base``)."""
    return "adapter" in CONDITIONS[condition].values()


def active_conditions(conditions, has_adapter: bool) -> list[str]:
    """The conditions that run: all of them with an adapter; without one only those that use none (``base``)."""
    return [c for c in conditions if has_adapter or not uses_adapter(c)]


#: where ``evaluate --executor`` runs the work units: in this process, or one Ray task per document
EXECUTORS = ("local", "ray")
#: what ``--dtype`` accepts; a result's ``environment.dtype`` is one of these or its spec model's dtype
RUN_DTYPES = ("float32", "bfloat16")
#: bytes of one element of a KV tensor in each dtype a model runs in
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: (layers, KV heads, head_dim) of every spec model, so a result's ``kv_entries`` and ``kv_bytes``
#: are checked without its weights; ``tests/adversarial/test_result_header.py`` compares these with
#: the models' own metadata.
KV_SHAPES = {
    "smollm2-135m": (30, 3, 64),
    "qwen2.5-0.5b": (24, 2, 64),
    "llama-3.1-8b": (32, 8, 128),
    "qwen3-4b": (36, 8, 128),
}

#: ``source.kind`` of a model the spec does not name, given as ``--model PATH`` (a local folder) or
#: ``--model ORG/NAME`` (a Hub id); its KV shape and dtype come from its config.json and are recorded
#: in the result's ``model`` (:data:`OWN_MODEL_KEYS`), where the checks read them.
OWN_SOURCES = ("local", "hub")
#: such a model's id: a folder name, or a Hub id ``org/name`` (it names the result's folder, with
#: "/" written "--", and is shown on the leaderboard)
OWN_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
#: what a result's ``model`` holds for such a model, beyond ``id`` and ``name``
OWN_MODEL_KEYS = ("source", "revision", "chat_template_sha256", "dtype", "kv_shape")

#: budget: how many of n document entries rho keeps. "kvpress": max(1, int(n (1 - rho))) for rho < 1;
#: "paper_floor": floor(n (1 - rho) + 1e-6), which may be 0 (the paper's context-only count).
BUDGETS = ("kvpress", "paper_floor")

OBJECTIVES = ("qa", "ctx_qa", "ntp")
#: A submission's ``adapter.recipe``: no adapter, or one of the training objectives.
RECIPES = ("none",) + OBJECTIVES
#: Training options added after adapters were first cached: part of the fingerprint only when set,
#: so existing cache keys (and committed results' adapter keys) stay valid.
_LATER_OPTIONS = {"qa_source": "train_qa", "schedule": "constant", "warmup_ratio": 0.0, "max_grad_norm": None,
                  "max_steps": None, "early_stop_accuracy": None, "qa_format": "spec", "ntp_format": "chunks",
                  "synthesis": "tokens", "ctx_window": "document", "early_stop": "checks",
                  "chunk_next_data": "tokens", "synthesis_batch_size": 1,
                  "synthesis_max_new_tokens": None}
#: LoRA init values: peft's own, plus ours (``shared_svd_a``, see :func:`init_shared_svd_a`).
LORA_INITS = ("default", "gaussian", "shared_svd_a")
SCHEDULES = ("constant", "cosine")
QA_FORMATS = ("spec", "paper")  # spec: the eval prompt without the document; paper: see adapters.build_examples
NTP_FORMATS = ("chunks", "chunk_next", "document")
#: ntp_format chunk_next's chunks. "tokens": ``chunk_tokens``-token chunks in document order; "sections": the
#: paper's synthesis sections in document order; "paper": those sections in the order the paper's code reads
#: them back from files named ``<id>_chunk<i>.txt`` sorted as strings (chunk1, chunk10, chunk11, ..., chunk2).
CHUNK_NEXT_DATA = ("tokens", "sections", "paper")
QA_SOURCES = ("train_qa", "synthesize")
SYNTHESES = ("tokens", "paper")
CTX_WINDOWS = ("document", "neighbours")
#: How ``early_stop_accuracy`` is applied. "checks": about ten checks per run, each on the accuracy since
#: the previous one; "paper": the paper's NTP rule (see :class:`benchmark.protocol.adapters.PaperEarlyStop`).
EARLY_STOPS = ("checks", "paper")
#: LoRA inits that rewrite the base weights: the base conditions would no longer be the base model.
_BASE_MODIFYING_INITS = ("pissa", "olora", "corda", "loftq")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    use_dora: bool = False
    # "default" (kaiming A, zero B), "gaussian", or "shared_svd_a" (the paper's: A = the top-r right
    # singular vectors of each target weight, frozen and hence shared by every document; B = 0)
    init: str = "default"
    eval_scale: float = 1.0  # multiplies the LoRA update at evaluation time

    def peft_config(self):
        """peft's ``LoraConfig`` for these settings (peft is imported here, not with the module)."""
        from peft import LoraConfig

        if self.init.split("_")[0].lower() in _BASE_MODIFYING_INITS:
            raise ValueError(
                f"lora.init '{self.init}' rewrites the base weights, which would change the base-model "
                "conditions; use 'default', 'gaussian' or 'shared_svd_a'"
            )
        if self.init not in LORA_INITS:
            raise ValueError(f"lora.init '{self.init}': choose from {LORA_INITS}")
        # shared_svd_a starts from peft's gaussian init (B = 0); init_shared_svd_a then overwrites A.
        init = {"default": True, "gaussian": "gaussian", "shared_svd_a": "gaussian"}[self.init]
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=list(self.target_modules),
            use_dora=self.use_dora, init_lora_weights=init, bias="none",
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
    # Optimiser (the paper: cosine, warmup 0.05, clipping at 1.0, as transformers' Trainer runs them).
    schedule: str = "constant"  # "constant" | "cosine" (both after a linear warmup)
    warmup_ratio: float = 0.0  # warmup steps = ceil(warmup_ratio * total steps), as in transformers
    max_grad_norm: float | None = None  # clip the LoRA gradients' global norm; None = no clipping
    max_steps: int | None = None  # as in transformers: when set, train exactly this many steps, epochs ignored
    early_stop_accuracy: float | None = None  # stop once the answer-token accuracy since the last check reaches it
    early_stop: str = "checks"  # "checks" (~10 per run) | "paper" (every 10 steps, 2 in a row, from step 50)
    # Example formats (see build_examples): the paper's QA format, ntp's variant.
    qa_format: str = "spec"  # "spec" | "paper"
    # qa_source synthesize: "tokens" (64-token chunks, our prompt) | "paper" (its sections, prompt)
    synthesis: str = "tokens"
    ctx_window: str = "document"  # ctx_qa: "document" | "neighbours" (the pair's section +/- one; synthesis "paper")
    ntp_format: str = "chunks"  # "chunks" | "chunk_next" (chat: chunk -> next chunk) | "document" (raw, whole)
    chunk_next_data: str = "tokens"  # chunk_next: "tokens" | "sections" | "paper" (see CHUNK_NEXT_DATA)
    synthesis_batch_size: int = 1  # qa_source synthesize: sections generated together (left-padded batches)
    synthesis_max_new_tokens: int | None = None  # cap on each synthesis generation; None: the synthesis default

    def __post_init__(self) -> None:
        for name, allowed in (("schedule", SCHEDULES), ("qa_format", QA_FORMATS), ("ntp_format", NTP_FORMATS),
                              ("synthesis", SYNTHESES), ("ctx_window", CTX_WINDOWS),
                              ("early_stop", EARLY_STOPS), ("chunk_next_data", CHUNK_NEXT_DATA)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.{name} '{getattr(self, name)}': choose from {allowed}")
        if self.ctx_window == "neighbours" and (self.objective != "ctx_qa" or self.synthesis != "paper"
                                                or self.qa_source != "synthesize"):
            raise ValueError("train.ctx_window 'neighbours' needs recipe ctx_qa with qa_source 'synthesize' and "
                             "synthesis 'paper' (pairs that know their section)")
        if self.chunk_next_data != "tokens" and not (self.objective == "ntp" and self.ntp_format == "chunk_next"):
            raise ValueError(f"train.chunk_next_data '{self.chunk_next_data}' needs recipe ntp with ntp_format "
                             "'chunk_next'")
        if self.synthesis_batch_size < 1:
            raise ValueError(f"train.synthesis_batch_size must be >= 1, got {self.synthesis_batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


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
        if self.lora.init == "shared_svd_a":  # how A is computed decides the adapter, so it keys the cache too
            fp["shared_a"] = "svd_lowrank-seed42-bf16-fp16"
        if self.train.hook and self.code_dir:  # every file the hook can import is part of the recipe
            fp["hook_code"] = stable_hash(folder_files(Path(self.code_dir), skip=("submission.yaml",)))
        return fp

    def hash(self) -> str:
        return stable_hash(self.fingerprint())


def train_blocks(adapter: dict) -> dict[str, dict]:
    """Every ``train`` block of a submission's ``adapter`` section, by field path: ``adapter/train``
    and each ``adapter/per_model/<model>`` (as written, not merged)."""
    blocks = {"adapter/train": adapter.get("train") or {}}
    return blocks | {f"adapter/per_model/{m}": t or {} for m, t in (adapter.get("per_model") or {}).items()}


def train_for(adapter: dict, model_id: str) -> dict:
    """The ``train`` settings of a submission's ``adapter`` section as trained for ``model_id``: its
    ``per_model`` overrides laid over ``train``. The one place the two are merged."""
    return (adapter.get("train") or {}) | ((adapter.get("per_model") or {}).get(model_id) or {})


# ---------------------------------------------------------------- one evaluation request


@dataclass(frozen=True)
class EvalRequest:
    """The options of one ``evaluate`` run, passed whole from the CLI through ``runner.evaluate`` to
    the executors (a new option is added here once, not copied through every signature).

    ``None`` means the spec's value (model, datasets, rhos, conditions, dtype) or the machine's
    (device). ``shard=(i, n)`` runs documents i, i+n, ...; ``worker_timeout`` is the time in seconds
    each request to the sandbox that runs the submission's own code may take."""

    submission: str  # the submission folder (or its submission.yaml)
    tier: str = "mini"
    model_id: str | None = None
    datasets: list[str] | None = None  # spec dataset ids or JSONL paths
    split: str = "test"
    docs: int | None = None
    questions: int | None = None
    rhos: list[float] | None = None
    conditions: list[str] | None = None
    device: str | None = None
    dtype: str | None = None
    out: str | Path = "runs"
    batch_size: int = 64
    batching: str = BATCHING
    progress: bool = True
    shard: tuple[int, int] | None = None
    worker_timeout: float = 900.0


def as_request(request: EvalRequest | str | Path, **options) -> EvalRequest:
    """``request`` with ``options`` laid over it; a submission path with options makes a new request."""
    if isinstance(request, EvalRequest):
        return dataclasses.replace(request, **options)
    return EvalRequest(submission=str(request), **options)
