"""The paper's QA-synthesis recipe: training QA pairs for a document-specific adapter.

Recipe (arXiv 2606.05698; ``synthesize:`` block of the paper's conf/*.yaml):

1. split the document into ``chunk_tokens`` (64) token chunks; or, with ``chunking="paper"``
   (the paper's own code), into sections of two consecutive units of at most ``unit_words``
   (64) words cut at sentence and paragraph ends (about 128 words, 50% overlap), prompted with
   the paper's prompt (:func:`build_paper_prompt`); each pair then records its ``section``;
2. for each chunk, prompt the generator with the chunk as the target passage
   and the ``neighbours`` (2) chunks on each side as background, asking for
   ``pairs_per_chunk`` (4) question/answer pairs as a JSON array of
   ``{"question", "answer"}`` with short answers in the passage's words;
3. sample (``temperature`` 0.4, ``top_p`` 0.9; 0 = greedy), seeded per batch of
   ``batch_size`` chunks (left-padded, generated together); a chunk whose
   output has no usable pair is generated again, ``retries`` (3) attempts in all
   (the paper's one try + ``max_retries: 2``); at most ``pairs_per_chunk``
   pairs are kept per chunk.

:func:`parse_qa_pairs` turns realistic model output (code fences, prose, trailing
commas, single quotes, truncation, wrapper objects ...) into clean pairs;
:func:`parse_qa_pairs_paper` is the paper's own, stricter parser (``parser="paper"``);
:func:`cached_synthesize` stores results under
``cache_dir/synth/<sha256>.json`` keyed by generator, document and settings.
Generation uses ``transformers`` ``model.generate``; a vLLM ``LLM`` is used
when one is passed as ``model``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROMPT_VERSION = 1  # bump when the prompt text changes: it is part of the cache key


@dataclass(frozen=True)
class SynthesisSettings:
    """Everything that changes the synthesized pairs (hence the cache key)."""

    chunk_tokens: int = 64
    pairs_per_chunk: int = 4
    neighbours: int = 2
    temperature: float = 0.4
    top_p: float = 0.9
    # 0 = no top-k cut (vLLM's default, which the paper ran), whatever the model's generation_config says
    top_k: int = 0
    retries: int = 3
    seed: int = 0
    max_new_tokens: int = 2048
    prompt_version: int = PROMPT_VERSION
    # "tokens": chunk_tokens-token chunks and our prompt; "paper": the paper's sections
    # (unit_words-word units cut at sentence/paragraph ends, two units per section, 50% overlap)
    # and the paper's prompt. Part of the cache key only when not "tokens" (older keys stay valid).
    chunking: str = "tokens"
    unit_words: int = 64
    # "lenient": parse_qa_pairs; "paper": parse_qa_pairs_paper (the paper's parse_output, stricter, no dedup)
    parser: str = "lenient"
    # chunks generated together (left-padded); with sampling a batch draws from one RNG stream, so it
    # changes the pairs and is part of the cache key when not 1
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.chunking not in ("tokens", "paper"):
            raise ValueError(f"SynthesisSettings.chunking must be 'tokens' or 'paper', got {self.chunking!r}")
        if self.parser not in PARSERS:
            raise ValueError(f"SynthesisSettings.parser must be one of {tuple(PARSERS)}, got {self.parser!r}")
        if self.temperature < 0:
            raise ValueError(f"SynthesisSettings.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        for name in ("chunk_tokens", "pairs_per_chunk", "retries", "max_new_tokens", "unit_words", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SynthesisSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.neighbours < 0:
            raise ValueError(f"SynthesisSettings.neighbours must be >= 0, got {self.neighbours}")


@dataclass
class SynthesisStats:
    """Counters of one synthesis run (stored next to the pairs in the cache)."""

    chunks: int = 0
    generate_calls: int = 0
    failed_chunks: int = 0  # chunks with no usable pair after every attempt
    pairs: int = 0
    extra_pairs_dropped: int = 0
    failures: list[int] = field(default_factory=list)


# --------------------------------------------------------------------- chunking


def chunk_document(text: str, tokenizer: Any, chunk_tokens: int = 64) -> list[str]:
    """Split ``text`` into consecutive chunks of ``chunk_tokens`` tokens.

    With a fast tokenizer the chunks are slices of the original text (cut at
    token starts, so no character is lost); otherwise each chunk is the decoded
    token ids. Whitespace-only chunks are dropped.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if not text.strip():
        return []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        starts = [start for start, end in enc["offset_mapping"] if end > start]
        cuts = starts[::chunk_tokens][1:]
        bounds = [0, *cuts, len(text)]
        chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    else:
        ids = tokenizer.encode(text, add_special_tokens=False)
        chunks = [
            tokenizer.decode(ids[i : i + chunk_tokens], skip_special_tokens=True)
            for i in range(0, len(ids), chunk_tokens)
        ]
    return [c.strip() for c in chunks if c.strip()]


_BOUNDARY = re.compile(r"(?P<para>\n\s*\n+)|(?P<punct>[.!?])(?P<sep>\s+|$)", re.S)


def _pieces(text: str) -> list[str]:
    """Sentences and paragraphs of ``text``, each with the separator that follows it, so that
    joining them gives back the text (less any leading separator)."""
    pieces: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if m.group("para") is not None:
            body, sep = text[start:m.start()], m.group("para")
        else:
            body, sep = text[start:m.start()] + m.group("punct"), m.group("sep")
        if body:
            pieces.append(body + sep)
        elif pieces:  # a separator right after a separator: it belongs to the previous piece
            pieces[-1] += sep
        start = m.end()
    if text[start:]:
        pieces.append(text[start:])
    return pieces


def paper_sections(text: str, unit_words: int = 64) -> list[str]:
    """The paper's synthesis sections (its ``shatter_document``, chunk_size 64, overlap 0):
    sentences are packed into units of at most ``unit_words`` words (a unit closes before the
    sentence that would overflow it; one long sentence is a unit of its own), and each section
    is two consecutive units, so sections are about 2 x 64 words and overlap by half. A document
    of one unit is one section."""
    units: list[str] = []
    bucket, words = [], 0
    for piece in _pieces(text):
        n = len(piece.split())
        if bucket and words + n > unit_words:
            units.append("".join(bucket))
            bucket, words = [], 0
        bucket.append(piece)
        words += n
    if bucket:
        units.append("".join(bucket))
    if not units:
        return [text]
    if len(units) == 1:
        return units
    return [units[i] + units[i + 1] for i in range(len(units) - 1)]


def section_context(sections: list[str], index: int, radius: int = 1) -> str:
    """ctx_qa's context in the paper: the pair's section and ``radius`` sections either side."""
    return "\n\n".join(s.strip() for s in sections[max(0, index - radius): index + radius + 1] if s.strip())


# ---------------------------------------------------------------------- prompts


def build_prompt(
    tokenizer: Any,
    chunks: list[str],
    index: int,
    *,
    pairs_per_chunk: int = 4,
    neighbours: int = 2,
) -> tuple[str, bool]:
    """The generation prompt for ``chunks[index]``.

    Returns ``(prompt, templated)``: the tokenizer's chat template is applied
    (thinking disabled for models that support it) when it has one, otherwise
    the bare instruction is returned and ``templated`` is False.
    """
    lo, hi = max(0, index - neighbours), min(len(chunks), index + neighbours + 1)
    background = "\n\n".join(chunks[lo:index] + chunks[index + 1 : hi])
    items = "1 question-answer pair" if pairs_per_chunk == 1 else f"{pairs_per_chunk} question-answer pairs"
    parts = []
    if background:
        parts.append(
            "The surrounding text of a document is given as background; use it only to "
            f"understand the target passage.\n\n[Background]\n{background}\n"
        )
    parts.append(f"[Target passage]\n{chunks[index]}\n")
    parts.append(
        f"Write {items} about facts stated in the target passage. Each answer must be "
        "short (a word or a few words), taken from the passage's own wording where "
        'possible. Reply with only a JSON array of objects with the keys "question" '
        'and "answer", and nothing else.'
    )
    content = "\n".join(parts)
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,  # Qwen3; ignored by other templates
        )
        return prompt, True
    return content + "\n\n", False


def build_paper_prompt(tokenizer: Any, sections: list[str], index: int, *, pairs_per_chunk: int = 4,
                       neighbours: int = 2) -> tuple[str, bool]:
    """The paper's synthesis prompt for ``sections[index]`` (its ``build_prompt``): the
    ``neighbours`` sections either side as ``[Background context]``, or the bare-passage form
    when there is none. Returns ``(prompt, templated)`` like :func:`build_prompt`."""
    lo, hi = max(0, index - neighbours), min(len(sections), index + neighbours + 1)
    background = "\n\n".join(sections[lo:index] + sections[index + 1: hi])
    items = "1 item" if pairs_per_chunk == 1 else f"{pairs_per_chunk} items"
    guidance = ("Each answer must be a short factual phrase grounded in the passage. "
                "Prefer the passage's exact wording when possible. ")
    schema = 'Return a JSON array where each element is an object with keys "question" and "answer". '
    closing = "Do NOT include any explanation or text outside the JSON array."
    if background:
        content = ("Below is a target passage, preceded by surrounding context for background understanding only.\n\n"
                   f"[Background context]\n{background}\n\n[Target passage]\n{sections[index]}\n\n"
                   f"Generate {items} whose questions and answers are drawn ONLY from facts stated in the "
                   "[Target passage] above. " + guidance + schema + closing)
    else:
        content = (f"Below is a passage. Generate {items} based ONLY on the content of this passage. "
                   + guidance + schema + closing + f"\n\nPassage:\n{sections[index]}")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False), True
    return content + "\n\n", False


# ----------------------------------------------------------------------- parser

_THINK_RE = re.compile(r"<think>.*?(?:</think>|$)", re.S)
_FENCE_RE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|$)", re.S)
_TRAILING_COMMA_RE = re.compile(r",\s*([\]}])")
_QUESTION_KEYS = ("question", "q", "query")
_ANSWER_KEYS = ("answer", "a", "short_answer")


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the bracket closing ``text[start]``, or None if unclosed.

    Strings in double or single quotes are skipped (with backslash escapes).
    """
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    pairs = {"[": "]", "{": "}"}
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in "]}":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return i + 1
    return None


def _loads(text: str) -> Any:
    """Parse one JSON-ish value at the start of ``text``; None when impossible."""
    decoder = json.JSONDecoder()
    for candidate in (text, _TRAILING_COMMA_RE.sub(r"\1", text)):
        try:
            return decoder.raw_decode(candidate)[0]
        except json.JSONDecodeError:
            pass
    end = _balanced_end(text, 0)
    if end is not None:  # Python-literal style: single quotes, trailing commas
        segment = text[:end]
        pythonic = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", segment)))
        for candidate in (segment, pythonic):
            try:
                return ast.literal_eval(candidate)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                pass
    return None


def _field(item: dict, keys: tuple[str, ...]) -> str | None:
    lowered = {str(k).strip().lower(): v for k, v in item.items()}
    for key in keys:
        value = lowered.get(key)
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    return None


def _is_pair(obj: Any) -> bool:
    return isinstance(obj, dict) and _field(obj, _QUESTION_KEYS) is not None


def _candidates(obj: Any) -> list[Any]:
    """Pair-like objects inside a parsed value (array, single object, or wrapper)."""
    if isinstance(obj, list):
        out: list[Any] = []
        for element in obj:
            out.extend(element if isinstance(element, list) else [element])
        return out
    if isinstance(obj, dict):
        if _is_pair(obj):
            return [obj]
        for value in obj.values():  # {"qa_pairs": [...]} and similar wrappers
            if isinstance(value, list) and any(isinstance(v, dict) for v in value):
                return value
    return []


def _scan_objects(text: str) -> list[Any]:
    """Every complete ``{...}`` that parses to a pair, left to right (truncation-proof)."""
    found: list[Any] = []
    i = text.find("{")
    while i != -1:
        end = _balanced_end(text, i)
        if end is not None:
            obj = _loads(text[i:end])
            if _is_pair(obj):
                found.append(obj)
                i = text.find("{", end)
                continue
        i = text.find("{", i + 1)
    return found


def _clean(items: list[Any]) -> list[dict]:
    pairs: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for item in items:
        if not isinstance(item, dict):
            continue
        question, answer = _field(item, _QUESTION_KEYS), _field(item, _ANSWER_KEYS)
        if not question or not answer:
            continue
        key = (" ".join(question.lower().split()), " ".join(answer.lower().split()))
        if key in seen:
            continue
        seen.add(key)
        pairs.append({"question": question, "answer": answer})
    return pairs


def _parse_region(text: str) -> list[dict]:
    starts = [i for i in (text.find("["), text.find("{")) if i != -1]
    if not starts:
        return []
    body = text[min(starts) :]
    parsed = _clean(_candidates(_loads(body)))
    scanned = _clean(_scan_objects(body))  # also catches objects split by prose or truncation
    return scanned if len(scanned) > len(parsed) else parsed


def parse_qa_pairs(text: str) -> list[dict]:
    """Extract ``[{"question": str, "answer": str}, ...]`` from raw model output.

    Tolerates ``<think>`` blocks, code fences, prose around the JSON, trailing
    commas, single-quoted (Python-literal) output, a single object or a wrapper
    object instead of an array, and arrays truncated mid-object (complete
    objects are kept). Extra keys are dropped; items lacking a question or a
    non-empty answer are skipped; numeric answers become strings; duplicates
    (case/whitespace-insensitive) are removed. Returns [] for hopeless text.
    """
    if not isinstance(text, str) or not text.strip():
        return []
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    text = _THINK_RE.sub("", text)
    if "```" in text:
        fenced = "\n".join(m.group(1) for m in _FENCE_RE.finditer(text))
        pairs = _parse_region(fenced)
        if pairs:
            return pairs
    return _parse_region(text)


def _paper_items(text: str) -> list[dict] | None:
    """The paper's ``_loads_qa_items``: strict ``json.loads``; None unless it parses; a parsed
    non-array gives None; array items need string ``question`` and ``answer`` keys, non-empty once
    stripped (others are skipped)."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, list):
        return None
    return [{"question": item["question"].strip(), "answer": item["answer"].strip()} for item in parsed
            if isinstance(item, dict) and isinstance(item.get("question"), str) and item["question"].strip()
            and isinstance(item.get("answer"), str) and item["answer"].strip()]


def _paper_repairs(text: str) -> list[str]:
    """The paper's ``_candidate_json_repairs``: drop one trailing comma, then close with ``]``,
    ``}]`` or ``"}]``."""
    stripped = text.rstrip()
    if stripped.endswith(","):
        stripped = stripped[:-1].rstrip()
    if not stripped:
        return []
    out: list[str] = []
    for candidate in (stripped + "]", stripped + "}]", stripped + '"}]'):
        if candidate != text and candidate not in out:
            out.append(candidate)
    return out


def parse_qa_pairs_paper(text: str) -> list[dict]:
    """The paper's parser (its ``parse_output``), rule for rule: strip; drop a leading ```` ```json ````
    and then a leading ```` ``` ````, and one trailing ```` ``` ````; cut at the first ``[``; parse the
    rest as strict JSON, else its three repairs (:func:`_paper_repairs`), the first that parses
    winning. Unlike :func:`parse_qa_pairs` it keeps duplicates and rejects prose after the array,
    trailing commas inside it, single quotes, a lone object, numeric answers and other key names.
    An array that parses but holds no valid item gives ``[]`` without trying the repairs."""
    if not isinstance(text, str):
        return []
    text = text.strip()
    for fence in ("```json", "```"):
        if text.startswith(fence):
            text = text[len(fence):]
    if text.endswith("```"):
        text = text[:-3]
    text = text.strip()
    bracket = text.find("[")
    if bracket != -1:
        text = text[bracket:]
    for candidate in (text, *_paper_repairs(text)):
        items = _paper_items(candidate)
        if items is not None:
            return items
    return []


PARSERS = {"lenient": parse_qa_pairs, "paper": parse_qa_pairs_paper}


# ------------------------------------------------------------------- generation


def _is_vllm(model: Any) -> bool:
    try:
        from vllm import LLM
    except ImportError:
        return False
    return isinstance(model, LLM)


def _generate_texts(model: Any, tokenizer: Any, prompts: list[str], templated: bool, settings: SynthesisSettings,
                    seeds: list[int]) -> list[str]:
    """One completion per prompt, generated together (the RNG is seeded by the caller): prompts are
    left-padded, so every row's new tokens start at the same column; ``temperature`` 0 is greedy."""
    if _is_vllm(model):  # pragma: no cover -- vLLM is not installed in CI
        from vllm import SamplingParams

        params = [SamplingParams(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or -1,
                                 max_tokens=settings.max_new_tokens, seed=seed) for seed in seeds]
        return [out.outputs[0].text for out in model.generate(prompts, params, use_tqdm=False)]

    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    inputs = _left_padded(tokenizer, prompts, add_special_tokens=not templated, pad_id=pad_id)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    # top_k 0: none, as vLLM's SamplingParams (the paper's); HF would take generation_config's
    sampling = (dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                     top_k=settings.top_k)
                if settings.temperature > 0 else dict(do_sample=False, temperature=None, top_p=None, top_k=None))
    with torch.no_grad():
        output = model.generate(**inputs, **sampling, repetition_penalty=1.0, max_new_tokens=settings.max_new_tokens,
                                pad_token_id=pad_id)
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    return [tokenizer.decode(row, skip_special_tokens=True) for row in new_tokens]


def _left_padded(tokenizer: Any, prompts: list[str], *, add_special_tokens: bool, pad_id: int) -> dict:
    """``input_ids`` and ``attention_mask`` of ``prompts``, each tokenized on its own (as unbatched)
    and padded on the left with ``pad_id``."""
    import torch

    rows = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask}


def _synthesize(model: Any, tokenizer: Any, text: str, settings: SynthesisSettings,
                progress: bool) -> tuple[list[dict], SynthesisStats]:
    import torch

    paper = settings.chunking == "paper"
    parse = PARSERS[settings.parser]
    chunks = (paper_sections(text, settings.unit_words) if paper
              else chunk_document(text, tokenizer, settings.chunk_tokens))
    stats = SynthesisStats(chunks=len(chunks))
    got: dict[int, list[dict]] = {}
    starts: Any = range(0, len(chunks), settings.batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="synthesizing QA", unit="batch")
    for start in starts:
        batch = list(range(start, min(start + settings.batch_size, len(chunks))))
        built = [(build_paper_prompt if paper else build_prompt)(
            tokenizer, chunks, index, pairs_per_chunk=settings.pairs_per_chunk, neighbours=settings.neighbours)
            for index in batch]
        prompts = {index: prompt for index, (prompt, _) in zip(batch, built)}
        templated = built[0][1]
        torch.manual_seed(settings.seed + start)  # retries continue this batch's RNG stream
        pending = batch
        for attempt in range(settings.retries):
            seeds = [(settings.seed + index) * 1000 + attempt for index in pending]
            raws = _generate_texts(model, tokenizer, [prompts[i] for i in pending], templated, settings, seeds)
            stats.generate_calls += len(pending)
            for index, raw in zip(pending, raws):
                got[index] = parse(raw)
                if not got[index]:
                    log.debug("chunk %d attempt %d: no usable pair in %r", index, attempt + 1, raw[:200])
            pending = [index for index in pending if not got[index]]
            if not pending:
                break
    pairs: list[dict] = []
    for index in range(len(chunks)):
        found = got.get(index, [])
        if not found:
            stats.failed_chunks += 1
            stats.failures.append(index)
        stats.extra_pairs_dropped += max(0, len(found) - settings.pairs_per_chunk)
        # paper sections: each pair remembers its section (ctx_qa's context is built around it)
        pairs.extend({**p, "section": index} if paper else p for p in found[: settings.pairs_per_chunk])
    stats.pairs = len(pairs)
    if stats.failed_chunks:
        log.warning(
            "QA synthesis: %d/%d chunks gave no usable pair after %d attempts",
            stats.failed_chunks,
            stats.chunks,
            settings.retries,
        )
    return pairs, stats


def synthesize_qa(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    chunk_tokens: int = 64,
    pairs_per_chunk: int = 4,
    neighbours: int = 2,
    temperature: float = 0.4,
    top_p: float = 0.9,
    retries: int = 3,
    seed: int = 0,
    max_new_tokens: int = 2048,
    batch_size: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Synthesize training QA pairs for one document (see the module docstring).

    ``neighbours`` is the number of chunks on EACH side given as background
    (the paper's ``context_window_chunks``); ``retries`` is the number of
    generation attempts per chunk, the first included. Returns a list of
    ``{"question", "answer"}`` dicts in chunk order (possibly empty).
    """
    settings = SynthesisSettings(
        chunk_tokens=chunk_tokens,
        pairs_per_chunk=pairs_per_chunk,
        neighbours=neighbours,
        temperature=temperature,
        top_p=top_p,
        retries=retries,
        seed=seed,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    return _synthesize(model, tokenizer, text, settings, progress)[0]


# ------------------------------------------------------------------------ cache


def synthesis_cache_path(cache_dir: str | Path, generator_id: str, text: str, settings: SynthesisSettings) -> Path:
    """``cache_dir/synth/<sha256 of (generator_id, document sha256, settings json)>.json``."""
    doc_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    fields = asdict(settings)
    if settings.chunking == "tokens":  # options added later enter the key only when used
        fields.pop("chunking")
        fields.pop("unit_words")
    for name, default in (("parser", "lenient"), ("batch_size", 1)):
        if fields[name] == default:
            fields.pop(name)
    key = json.dumps([generator_id, doc_sha, fields], sort_keys=True, separators=(",", ":"))
    return Path(cache_dir) / "synth" / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()}.json"


def cached_synthesize(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    cache_dir: str | Path,
    generator_id: str,
    progress: bool = True,
    **settings: Any,
) -> list[dict]:
    """:func:`synthesize_qa` with an on-disk cache.

    ``generator_id`` names the generator (e.g. ``"Qwen/Qwen3-4B@<revision>"``);
    ``settings`` are :func:`synthesize_qa`'s keyword arguments. A cached result
    for the same generator, document text and settings is returned without
    generating; an unreadable cache file is regenerated (with a warning).
    """
    settings_obj = SynthesisSettings(**settings)
    path = synthesis_cache_path(cache_dir, generator_id, text, settings_obj)
    if path.exists():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            pairs = cached["pairs"]
            if isinstance(pairs, list) and all(isinstance(p, dict) for p in pairs):
                log.info("QA synthesis: reusing %s (%d pairs)", path, len(pairs))
                return pairs
            raise ValueError("field 'pairs' is not a list of objects")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("QA synthesis: ignoring unreadable cache file %s (%s); regenerating", path, exc)

    pairs, stats = _synthesize(model, tokenizer, text, settings_obj, progress)
    record = {
        "generator_id": generator_id,
        "doc_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "settings": asdict(settings_obj),
        "stats": asdict(stats),
        "pairs": pairs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return pairs
