"""Conformance checks for what lands in the repository: submissions and result files.

``check_submission(path)`` (``lorakv-bench validate submissions/<name>``) loads the
submission YAML against its schema, builds its adapter recipe and runs its compressor on the
tiny random models of :mod:`benchmark.tiny` (seconds, CPU, nothing downloaded): the press must
score exactly the document entries, (kv_heads, n_doc) per layer, deterministically, and must
leave the KV cache alone, so the framework's eviction keeps kvpress's budget of document
entries per head and every non-document entry.

``check_result_file(path)`` re-derives everything a result file claims that can be re-derived
without a model: schema, known spec hash, extracted answers, question ids / text / gold answers
against the dataset file the spec pins (sha256), per-question ROUGE-L/EM scored against those
pinned answers, the (rho, condition) cells, every ``kv_entries`` against the budget ``evict``
keeps at its rho, its place in ``leaderboard/results/``, and the hash of the submission folder
it names. The generations themselves are re-run by ``lorakv-bench verify``.

Both return a list of problems, each naming the file and field; an empty list means conformant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

#: rho values the compressor is exercised at (kvpress's budget: compute_n_kept(n_doc, rho)).
CONFORMANCE_RHOS = (0.0, 0.3, 0.5, 0.9, 1.0)
#: tiny model families the compressor must work on (GQA llama; qwen3 with q/k norms).
CONFORMANCE_MODELS = ("llama", "qwen3")
TOL = 1e-6
MAX_PER_KIND = 5  # repeated problems of one kind are summarised after this many

_SENTENCES = (
    "Maren Oskvik opened a bakery in Tollervik in 1987.",
    "Her brother Anders moved to Quillsby and wrote to her every spring.",
    "The patient received 40 mg of Velatrixin daily for three weeks.",
    "Dr. Halvorsen noted a creatinine of 1.8 mg/dL and lowered the dose.",
    "The bakery burned down in 1994 and was rebuilt on the same square.",
    "Anders returned to Tollervik only once, for the reopening.",
)
#: The document the compressor scores: long enough for kvpress's default windows (e.g. SnapKV's 64).
CONFORMANCE_DOCUMENT = " ".join(_SENTENCES[(i * 5) % len(_SENTENCES)] for i in range(18))  # ~480 tokens
CONFORMANCE_TRAIN_QA = (("Where did Maren open her bakery?", "Tollervik"), ("Who moved to Quillsby?", "Anders"))


# ============================================================== submissions


def check_submission(path: str | Path) -> list[str]:
    """Problems with ``submissions/<name>`` (or a submission.yaml); empty = conformant."""
    from .spec import SpecError
    from .submission import load_submission

    path = Path(path)
    yml = path / "submission.yaml" if path.is_dir() else path
    try:
        sub = load_submission(path)
    except SpecError as exc:
        return [str(exc)]
    except (TypeError, ValueError) as exc:  # e.g. settings the schema lets through but the dataclasses refuse
        return [f"{yml}: field 'adapter': {type(exc).__name__}: {exc}"]
    problems = _check_recipe(sub, yml)
    problems += _check_compressor(sub, yml)
    return problems


#: seconds ``validate`` gives one submission's checks in the sandbox
VALIDATE_TIMEOUT_S = 60.0


def check_submission_isolated(path: str | Path, timeout: float = VALIDATE_TIMEOUT_S) -> list[str]:
    """:func:`check_submission` in the sandbox that runs submission code (:mod:`benchmark.worker`:
    no network, the package read-only without its data, no checkout, no cache), so a submission's
    import-time code can neither read an answer nor change a checker. A child that ends without
    reporting (``os._exit``, a crash, the time limit) is a failure.

    What the child reports is the submission's own code's word; for a press of its own this
    process then asks the sandbox for plans on a tiny model and checks them itself
    (:func:`check_sandboxed_plans`), as ``evaluate`` checks every plan."""
    import json
    import subprocess
    import sys
    import tempfile

    from .worker import _child_env, _limits, bwrap_works, sandbox_args

    path = Path(path)
    folder = (path if path.is_dir() else path.parent).resolve()
    cmd = [sys.executable, "-m", "benchmark.conformance", str(path.resolve())]
    if bwrap_works():
        cmd = sandbox_args([folder]) + cmd
    with tempfile.TemporaryDirectory(prefix="lorakv-validate-") as tmp:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env(), cwd=tmp,
                                  preexec_fn=_limits("cpu"))
        except subprocess.TimeoutExpired:
            return [f"{path}: the conformance check did not finish within {timeout:.0f} s"]
    lines = proc.stdout.strip().splitlines()
    try:
        problems = json.loads(lines[-1]) if lines else None
        if not (isinstance(problems, list) and all(isinstance(p, str) for p in problems)):
            raise ValueError("not a list of strings")
    except ValueError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [f"{path}: the conformance check ended without a result (exit code {proc.returncode}; {tail[0]:.300})"]
    if not problems:
        problems = check_sandboxed_plans(path, timeout)
    return problems


def check_sandboxed_plans(path: Path, timeout: float = VALIDATE_TIMEOUT_S) -> list[str]:
    """For a press of the submission's own: the plans the sandbox returns on the tiny models, checked
    here (shape, exact budget per layer and KV head), and the same on a second request."""
    from .models import PromptRenderer
    from .plan import PlanError, check_plan
    from .spec import load_spec
    from .submission import load_submission
    from .tiny import tiny_model
    from .worker import SubmissionProcess, WorkerError

    sub = load_submission(path)
    if not sub.press_is_code:
        return []
    yml = sub.path / "submission.yaml"
    rhos = [r for r in CONFORMANCE_RHOS if 0 < r < 1]
    problems = []
    for kind in CONFORMANCE_MODELS:
        model, tok = tiny_model(kind)
        renderer = PromptRenderer(tok, load_spec("mini").prompt)
        ids = renderer.prefix_ids + renderer.doc_ids(CONFORMANCE_DOCUMENT)
        span = (len(renderer.prefix_ids), len(ids))
        where = f"{yml}: field 'compressor/press': the plan of {sub.compressor_cfg['press']} on the tiny {kind} model"
        try:
            code = SubmissionProcess.start(sub.path, model=model, tokenizer=tok, timeout=timeout)
            try:
                first, again = (code.plan(ids, span, rhos, "kvpress", where=where) for _ in range(2))
            finally:
                code.close()
            for r in rhos:
                check_plan(first[r], n_layers=model.config.num_hidden_layers, kv_heads=model.config.num_key_value_heads,
                           n_doc=span[1] - span[0], rho=r, budget="kvpress", where=where)
                if not bool((first[r] == again[r]).all()):
                    raise PlanError(f"{where}: rho={r}: a second request keeps other entries (plans must be "
                                    "deterministic)")
        except (PlanError, WorkerError) as exc:
            problems.append(str(exc) if str(exc).startswith(str(yml)) else f"{where}: {exc}")
    return problems


def _check_recipe(sub, yml: Path) -> list[str]:
    from .adapters import OBJECTIVES
    from .spec import CONDITIONS

    problems = []
    headline = sub.headline_condition
    if headline not in CONDITIONS:
        problems.append(f"{yml}: field 'headline_condition': unknown condition '{headline}' (have: {sorted(CONDITIONS)})")
    recipe = sub.recipe
    if not recipe.enabled:
        if headline != "base":
            problems.append(f"{yml}: field 'headline_condition': '{headline}' needs an adapter, but adapter.recipe is 'none' "
                            "(only the base condition runs); use 'base' or choose a recipe")
        return problems
    if recipe.train.objective not in OBJECTIVES:
        problems.append(f"{yml}: field 'adapter/recipe': unknown objective '{recipe.train.objective}' (have: {OBJECTIVES})")
    try:
        cfg = recipe.lora.peft_config()
    except Exception as exc:  # noqa: BLE001 - anything peft refuses is a submission problem
        problems.append(f"{yml}: field 'adapter/lora': the LoRA config does not build: {type(exc).__name__}: {exc}")
        cfg = None
    if cfg is not None:
        problems += _check_lora_attaches(cfg, yml)
    if recipe.train.hook:
        if recipe.train.objective == "ntp":
            problems.append(f"{yml}: field 'adapter/train/hook': the ntp recipe trains on the document text and never "
                            "calls a QA hook; use recipe qa or ctx_qa, or drop the hook")
        else:
            problems += _check_hook(recipe, yml)
    return problems


def _check_lora_attaches(cfg, yml: Path) -> list[str]:
    """The adapter must attach to the (llama/qwen-style) models of the benchmark: target_modules exist."""
    from .tiny import tiny_model

    model, _ = tiny_model("llama")
    try:
        model.add_adapter(cfg, adapter_name="conformance")
    except Exception as exc:  # noqa: BLE001
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and not list(m.children())})
        return [f"{yml}: field 'adapter/lora/target_modules': the adapter does not attach to a llama-style model: "
                f"{type(exc).__name__}: {exc} (leaf modules: {names})"]
    return []


def _check_hook(recipe, yml: Path) -> list[str]:
    from .datasets import TrainingView

    field = "adapter/train/hook"
    view = TrainingView("conformance-doc", CONFORMANCE_DOCUMENT, CONFORMANCE_TRAIN_QA)
    module_name = recipe.train.hook.split(":")[0]
    module_file = Path(recipe.code_dir or ".") / (module_name.replace(".", "/") + ".py")
    if not module_file.exists():
        return [f"{yml}: field '{field}': '{recipe.train.hook}' names {module_file.name}, which is not in the "
                f"submission folder {module_file.parent}"]
    from .paths import import_from

    try:
        out = import_from(recipe.code_dir, recipe.train.hook)(view)
    except Exception as exc:  # noqa: BLE001
        return [f"{yml}: field '{field}': '{recipe.train.hook}' failed on a sample TrainingView: {type(exc).__name__}: {exc}"]
    if not isinstance(out, list) or not out:
        return [f"{yml}: field '{field}': '{recipe.train.hook}' must return a non-empty list of "
                f"{{'question': str, 'answer': str}} dicts, got {type(out).__name__}"
                + (" (empty)" if isinstance(out, list) else "")]
    for i, item in enumerate(out):
        if not (isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str)
                and item["question"].strip() and item["answer"].strip()):
            return [f"{yml}: field '{field}': item {i} returned by '{recipe.train.hook}' is not a "
                    f"{{'question': non-empty str, 'answer': non-empty str}} dict: {item!r:.200}"]
    return []


def _check_compressor(sub, yml: Path) -> list[str]:
    cfg = sub.compressor_cfg
    desc = f"'{cfg['press']}'" + (f" with kwargs {cfg['kwargs']}" if cfg.get("kwargs") else "")
    try:
        sub.make_compressor()
    except Exception as exc:  # noqa: BLE001
        field = "compressor/kwargs" if isinstance(exc, TypeError) and "argument" in str(exc) else "compressor/press"
        return [f"{yml}: field '{field}': compressor {desc} could not be built: {type(exc).__name__}: {exc}"]
    import torch

    problems = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and immune to a busy machine
    try:
        for kind in CONFORMANCE_MODELS:
            try:
                problems += _check_press_on_tiny(sub, kind, yml, desc)
            except Exception as exc:  # noqa: BLE001 - a press that crashes is non-conformant, not a crash of validate
                problems.append(f"{yml}: field 'compressor/press': compressor {desc} raised on the tiny {kind} model: "
                                f"{type(exc).__name__}: {exc}")
    finally:
        torch.set_num_threads(threads)
    return problems


@dataclass
class _TinyScoring:
    """A submission's press scored on a tiny model's prefill of the conformance document, beside
    the same prefill without a press: what each check of the compressor contract reads."""

    sub: object
    yml: Path
    desc: str
    where: str
    model: object
    tok: object
    ids: list[int]
    span: tuple[int, int]
    n_doc: int
    n_layers: int
    kv_heads: int
    ref_kv: list  # the unpruned cache, no press involved
    press: object
    kv: list
    scores: object


def _score_on_tiny(sub, kind: str, yml: Path, desc: str) -> _TinyScoring:
    from .compression import prefill
    from .models import PromptRenderer
    from .spec import load_spec
    from .tiny import tiny_model

    model, tok = tiny_model(kind)
    renderer = PromptRenderer(tok, load_spec("mini").prompt)
    doc_ids = renderer.doc_ids(CONFORMANCE_DOCUMENT)
    ids = renderer.prefix_ids + doc_ids
    span = (len(renderer.prefix_ids), len(ids))
    assert span[0] > 0, "the conformance prompt must have a non-empty prefix"
    ref_kv, _ = prefill(model, ids, span)
    press = sub.make_compressor()
    kv, scores = prefill(model, ids, span, press, CONFORMANCE_RHOS, tokenizer=tok)
    return _TinyScoring(sub, yml, desc, f"{yml}: field 'compressor/press': compressor {desc} on the tiny {kind} model",
                        model, tok, ids, span, len(doc_ids), model.config.num_hidden_layers,
                        model.config.num_key_value_heads, ref_kv, press, kv, scores)


def _check_press_on_tiny(sub, kind: str, yml: Path, desc: str) -> list[str]:
    """The compressor contract (``compression.Compressor``) on one tiny model, one check each;
    a broken cache or score shape stops the checks that would read it."""
    t = _score_on_tiny(sub, kind, yml, desc)
    problems = check_cache_untouched(t) or check_score_shape(t)
    if problems:
        return problems
    problems, kept = check_eviction_budget(t)
    problems += check_deterministic(t, kept)
    if not problems:
        problems += check_declared_rho_dependence(t)
    return problems


def check_cache_untouched(t: _TinyScoring) -> list[str]:
    """Scoring does not touch the cache: the same entries as a prefill without the press."""
    import torch

    where, kv, ref_kv = t.where, t.kv, t.ref_kv
    for i, ((k, v), (rk, rv)) in enumerate(zip(kv, ref_kv)):
        if k.shape != rk.shape or not (torch.equal(k, rk) and torch.equal(v, rv)):
            return [f"{where}: score() changed the KV cache of layer {i} during the prefill (keys {tuple(k.shape)}, "
                    f"expected {tuple(rk.shape)} and identical entries); a compressor only returns scores, the "
                    "framework evicts (and never evicts the prefix or the question)"]
    if len(kv) != len(ref_kv):
        return [f"{where}: the prefill cache has {len(kv)} layers, expected {len(ref_kv)}"]
    return []


def check_score_shape(t: _TinyScoring) -> list[str]:
    """One score per KV head and document entry, (kv_heads, n_doc) per layer (the press returns
    (batch, kv_heads, n_doc)), no NaN."""
    import torch

    where, scores, n_layers, kv_heads, n_doc = t.where, t.scores, t.n_layers, t.kv_heads, t.n_doc
    for key, per_layer in scores.by_rho.items():
        at = "" if key is None else f" (compression_ratio={key})"
        if len(per_layer) != n_layers:
            return [f"{where}: got scores for {len(per_layer)} layers{at}, expected {n_layers}"]
        for i, s in enumerate(per_layer):
            if tuple(s.shape) != (kv_heads, n_doc):
                return [f"{where}: score() returned shape {(1, *tuple(s.shape))} for layer {i}{at}; expected "
                        f"(batch, kv_heads, n_doc) = (1, {kv_heads}, {n_doc}): one score per KV head and document "
                        "entry (the press sees only the document)"]
            if torch.isnan(s).any():
                return [f"{where}: score() returned NaN for layer {i}{at}"]
    return []


def check_eviction_budget(t: _TinyScoring) -> tuple[list[str], dict]:
    """``evict`` at every rho keeps kvpress's budget per head, the prefix untouched, and only document
    entries in their order; returns the problems and the pruned cache per rho."""
    import torch
    from kvpress.utils import compute_n_kept

    from .compression import evict

    where, kv, scores, span, ref_kv, n_doc = t.where, t.kv, t.scores, t.span, t.ref_kv, t.n_doc
    kv_heads, n_layers = t.kv_heads, t.n_layers
    problems = []
    kept = {}
    for rho in CONFORMANCE_RHOS:
        pkv, n_keep = evict(kv, scores, span, rho)
        budget = compute_n_kept(n_doc, rho)
        if n_keep != budget:
            problems.append(f"{where}: rho={rho} keeps {n_keep} document entries per head, kvpress's budget is {budget}")
        for i, ((k, v), (rk, rv)) in enumerate(zip(pkv, ref_kv)):
            if getattr(pkv, "keep", None) is not None:  # head-wise budgets: per-head (and per-layer) counts differ
                problems += _check_ragged_layer(pkv.keep[i], k, rk, span, f"{where}: rho={rho} layer {i}")
                continue
            if k.shape[2] != span[0] + budget:
                problems.append(f"{where}: rho={rho} layer {i}: {k.shape[2]} entries per head after eviction, expected "
                                f"{span[0]} prefix + {budget} document = {span[0] + budget}")
                break
            if not (torch.equal(k[:, :, :span[0]], rk[:, :, :span[0]]) and torch.equal(v[:, :, :span[0]], rv[:, :, :span[0]])):
                problems.append(f"{where}: rho={rho} layer {i}: a non-document (prefix) entry was evicted or changed")
                break
            if not _is_ordered_subset(k[0, :, span[0]:], rk[0, :, span[0]:span[1]]):
                problems.append(f"{where}: rho={rho} layer {i}: the kept entries are not document entries of the "
                                "unpruned cache in their original order")
                break
        if getattr(pkv, "keep", None) is not None:  # head-wise: kv_heads * n_layers * budget entries in all
            total = sum(int(m[:, span[0]:].sum()) for m in pkv.keep)
            if total != kv_heads * n_layers * budget:
                problems.append(f"{where}: rho={rho} keeps {total} document entries over all layers and heads, "
                                f"kvpress's budget is {kv_heads} x {n_layers} x {budget}")
        kept[rho] = pkv
    return problems, kept


def check_deterministic(t: _TinyScoring, kept: dict) -> list[str]:
    """The same press again, and a fresh instance, keep the same entries at every rho."""
    import torch

    from .compression import evict, prefill

    where, model, ids, span, tok, press, sub = t.where, t.model, t.ids, t.span, t.tok, t.press, t.sub
    problems = []
    for label, again in (("a second run of the same press", press), ("a fresh instance of the press", sub.make_compressor())):
        kv2, scores2 = prefill(model, ids, span, again, CONFORMANCE_RHOS, tokenizer=tok)
        for rho in CONFORMANCE_RHOS:
            pkv2, _ = evict(kv2, scores2, span, rho)
            if any(not torch.equal(a[0], b[0]) for a, b in zip(kept[rho], pkv2)):
                problems.append(f"{where}: not deterministic: {label} keeps different entries at rho={rho} "
                                "(seed any randomness, e.g. RandomPress(seed=0))")
                break
    return problems


def check_declared_rho_dependence(t: _TinyScoring) -> list[str]:
    """A press scored once for all rhos does not read compression_ratio (else it must declare
    score_depends_on_rho: true)."""
    import torch

    from .compression import prefill, score_depends_on_rho

    where, model, ids, span, tok, press, sub, yml, desc = (t.where, t.model, t.ids, t.span, t.tok, t.press, t.sub,
                                                           t.yml, t.desc)
    problems = []
    if not score_depends_on_rho(press) and hasattr(press, "compression_ratio"):
        runs = []
        for ratio in (0.25, 0.25, 0.75):
            p = sub.make_compressor()
            p.compression_ratio = ratio
            runs.append(prefill(model, ids, span, p, CONFORMANCE_RHOS, tokenizer=tok)[1].for_rho(0.5))
        same = [all(torch.equal(a, b) for a, b in zip(runs[0], other)) for other in runs[1:]]
        if not same[0]:
            problems.append(f"{where}: not deterministic: two fresh instances score the document differently "
                            "(seed any randomness, e.g. RandomPress(seed=0))")
        elif not same[1]:
            problems.append(f"{yml}: field 'compressor/score_depends_on_rho': the scores of {desc} change with "
                            "compression_ratio but it is scored once for every rho; set score_depends_on_rho: true")
    return problems


def _check_ragged_layer(keep, k, rk, span, where: str) -> list[str]:
    """A head-wise (RaggedKV) layer: the prefix kept whole and each head's real entries are
    document entries of the unpruned cache in order (the total budget is checked over layers)."""
    import torch

    heads = keep.shape[0]
    per_head = keep[:, span[0]:].sum(-1)
    if not bool(keep[:, : span[0]].all()):
        return [f"{where}: a non-document (prefix) entry was evicted"]
    if not torch.equal(k[:, :, : span[0]], rk[:, :, : span[0]]):
        return [f"{where}: a non-document (prefix) entry was evicted or changed"]
    for h in range(heads):
        real = k[0, h:h + 1, span[0]:span[0] + int(per_head[h])]
        if not _is_ordered_subset(real, rk[0, h:h + 1, span[0]:span[1]]):
            return [f"{where}: head {h}: the kept entries are not document entries of the unpruned cache in order"]
    return []


def _is_ordered_subset(kept, ref) -> bool:
    """Every head's kept rows (heads, n_keep, dim) are rows of ref (heads, n_doc, dim), in their original order."""
    if kept.shape[1] == 0:
        return True
    match = (kept[:, :, None, :] == ref[:, None, :, :]).all(-1)  # (heads, n_keep, n_doc)
    if not match.any(-1).all():
        return False
    pos = match.float().argmax(-1)  # first matching document position of each kept row
    return bool((pos[:, 1:] > pos[:, :-1]).all())


# ============================================================== result files


def _limited(problems: list[str], kind_count: dict, kind: str, message: str) -> None:
    kind_count[kind] = kind_count.get(kind, 0) + 1
    if kind_count[kind] <= MAX_PER_KIND:
        problems.append(message)


def _close(a, b, tol: float = TOL) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= tol * max(1.0, abs(a), abs(b))
    return a == b


def _find_submissions_dir(path: Path) -> Path:
    for parent in path.resolve().parents:
        if (parent / "submissions").is_dir():
            return parent / "submissions"
    return Path.cwd() / "submissions"


def check_result_file(path: str | Path, *, submissions_dir: str | Path | None = None,
                      full_protocol: bool = True) -> list[str]:
    """Problems with a result file ``leaderboard/results/<submission>/<tier>/<model>/<dataset>.json``.

    ``submissions_dir`` defaults to the nearest ``submissions/`` above the file (else ``./submissions``).
    ``full_protocol`` also requires what the leaderboard compares on: the test split, the spec's
    rho grid and conditions, and every document and question of the split (when its data is present).

    Each named check below re-derives one thing the file claims; what cannot be re-derived without
    the model (the generations themselves) is what ``lorakv-bench verify`` re-runs.
    """
    from .results import load_result
    from .spec import SpecError

    path = Path(path)
    try:
        data = load_result(path)
    except SpecError as exc:
        return [str(exc)]
    except OSError as exc:
        return [f"{path}: cannot read: {exc}"]
    spec, answer_prefix, problems = _result_spec(path, data)
    pinned, pinned_problems = _pinned_questions(path, data, spec)
    problems += check_spec_hash(path, data)
    problems += problems_of_place(path, data)
    problems += pinned_problems
    problems += check_predictions_extracted(path, data, answer_prefix)
    problems += check_predictions_against_dataset(path, data, pinned)
    problems += check_prediction_scores(path, data, pinned)
    problems += check_cells(path, data)
    problems += check_kv_budget(path, data)
    problems += _check_grid(path, data)
    if full_protocol and spec is not None:
        problems += _check_protocol(path, data, spec)
    problems += check_submission_hash(path, data, submissions_dir)
    return problems


def _result_spec(path: Path, data: dict):
    """(spec, answer prefix, problems) of the tier and model the file names."""
    from .spec import SpecError, load_spec

    try:
        spec = load_spec(data["tier"])
        return spec, spec.prompt_for(spec.model(data["model"]["id"])).answer_prefix, []
    except SpecError as exc:
        return None, None, [f"{path}: field 'model/id': {exc}"]


def check_spec_hash(path: Path, data: dict) -> list[str]:
    """The file was produced under a spec shipped in this version."""
    from .spec import known_spec_hashes

    known = known_spec_hashes()
    if data["spec_hash"] not in known:
        return [f"{path}: field 'spec_hash': {data['spec_hash']} is not the hash of any spec shipped in this "
                f"version ({', '.join(f'{v}={h}' for h, v in sorted(known.items()))}); re-run the evaluation"]
    if known[data["spec_hash"]] != data["spec_version"]:
        return [f"{path}: field 'spec_version': '{data['spec_version']}' but spec_hash {data['spec_hash']} is "
                f"spec '{known[data['spec_hash']]}'"]
    return []


def problems_of_place(path: Path, data: dict) -> list[str]:
    """The file sits at ``<results>/<submission>/<tier>/<model>/<dataset>.json``, matching its contents."""
    split = data["dataset"]["split"]
    stem = data["dataset"]["id"] + ("" if split == "test" else f".{split}")
    expected = (data["submission"]["name"], data["tier"], data["model"]["id"], stem + ".json")
    if tuple(path.parts[-4:]) != expected:
        return [f"{path}: field 'submission/name', 'tier', 'model/id', 'dataset': the file must live at "
                f"<results>/{'/'.join(expected)}, it is at .../{'/'.join(path.parts[-4:])}"]
    return []


def _pinned_questions(path: Path, data: dict, spec) -> tuple[dict | None, list[str]]:
    """``{(doc_id, question_id): Question}`` of the dataset split the file names, read from the file
    the spec pins (its sha256 verified); None when that data is not on this machine (paper tier)."""
    from .datasets import load_split
    from .spec import SpecError

    if spec is None:
        return None, []
    ds = data["dataset"]
    try:
        data_file = spec.dataset(ds["id"]).split(ds["split"])
    except SpecError as exc:
        return None, [f"{path}: field 'dataset/id': {exc}"]
    problems = []
    if ds.get("sha256") != data_file.sha256:
        problems.append(f"{path}: field 'dataset/sha256': {ds.get('sha256')}, the spec pins {data_file.sha256}")
    if not data_file.path.exists():  # paper-tier data lives in the cache; checked where it is prepared
        return None, problems
    try:
        docs = load_split(data_file)
    except SpecError as exc:
        return None, problems + [f"{path}: field 'dataset': the pinned data does not load: {exc}"]
    return {(d.doc_id, q.id): q for d in docs for q in d.questions}, problems


def check_predictions_extracted(path: Path, data: dict, answer_prefix: str | None) -> list[str]:
    """Each stored ``prediction`` is the answer extracted from its ``generation``."""
    from .metrics import extract_answer

    if answer_prefix is None:
        return []
    problems, counts = [], {}
    for i, p in enumerate(data["predictions"]):
        extracted = extract_answer(p["generation"], answer_prefix)
        if extracted != p["prediction"]:
            _limited(problems, counts, "prediction",
                     f"{path}: field 'predictions/{i}/prediction': {p['prediction']!r} but the generation extracts "
                     f"to {extracted!r} (answer_prefix {answer_prefix!r})")
    return problems + _more(path, counts)


def check_predictions_against_dataset(path: Path, data: dict, pinned: dict | None) -> list[str]:
    """Question ids, question text, gold answers and tags of every prediction are the pinned dataset's."""
    if pinned is None:
        return []
    problems, counts = [], {}
    for i, p in enumerate(data["predictions"]):
        q = pinned.get((p["doc_id"], p["question_id"]))
        if q is None:
            _limited(problems, counts, "question_id",
                     f"{path}: field 'predictions/{i}/question_id': '{p['question_id']}' is not a question of document "
                     f"'{p['doc_id']}' in the pinned dataset {data['dataset']['id']} ({data['dataset']['split']})")
            continue
        if list(p["answers"]) != list(q.answers):
            _limited(problems, counts, "answers",
                     f"{path}: field 'predictions/{i}/answers': {p['answers']!r:.120} but the pinned dataset's gold "
                     f"answers of {p['question_id']} are {list(q.answers)!r:.120}")
        if "question" in p and p["question"] != q.question:
            _limited(problems, counts, "question",
                     f"{path}: field 'predictions/{i}/question': {p['question']!r:.120} but the pinned dataset asks "
                     f"{q.question!r:.120}")
        if list(p.get("tags", [])) != list(q.tags):
            _limited(problems, counts, "tags",
                     f"{path}: field 'predictions/{i}/tags': {p.get('tags', [])} but the pinned dataset tags "
                     f"{p['question_id']} {list(q.tags)}")
    return problems + _more(path, counts)


def check_prediction_scores(path: Path, data: dict, pinned: dict | None) -> list[str]:
    """``rouge_l`` / ``exact_match`` equal the scores of ``prediction`` against the pinned gold answers
    (the answers stored in the file only when the pinned data is not on this machine)."""
    from .metrics import score_prediction

    problems, counts = [], {}
    for i, p in enumerate(data["predictions"]):
        q = pinned.get((p["doc_id"], p["question_id"])) if pinned is not None else None
        if pinned is not None and q is None:
            continue  # reported by check_predictions_against_dataset
        s = score_prediction(p["prediction"], q.answers if q is not None else p["answers"])
        for metric in ("rouge_l", "exact_match"):
            if not _close(100 * s[metric], p[metric]):
                _limited(problems, counts, metric,
                         f"{path}: field 'predictions/{i}/{metric}': stored {p[metric]!r}, recomputed "
                         f"{100 * s[metric]!r} from its prediction and the gold answers")
    return problems + _more(path, counts)


def check_cells(path: Path, data: dict) -> list[str]:
    """The ``cells`` equal the aggregation of the predictions."""
    from .results import aggregate

    cells = aggregate(data["predictions"], data["documents"])
    if len(cells) != len(data["cells"]):
        return [f"{path}: field 'cells': {len(data['cells'])} cells stored, the predictions aggregate to {len(cells)}"]
    for i, (want, got) in enumerate(zip(cells, data["cells"])):
        bad = [k for k in want if k not in got or not _close(want[k], got[k])]
        if bad:
            k = bad[0]
            return [f"{path}: field 'cells/{i}/{k}': stored {got.get(k)!r}, the predictions aggregate to "
                    f"{want[k]!r} (rho={want['rho']}, condition={want['condition']})"]
    return []


def kept_per_head(n_prefix: int, n_doc: int, rho: float) -> int:
    """KV entries per layer and KV head after ``compression.evict`` at ``rho``: every prefix entry
    plus kvpress's budget of document entries (the rule ``evict`` applies)."""
    from kvpress.utils import compute_n_kept

    return n_prefix + (min(compute_n_kept(n_doc, rho), n_doc) if n_doc else 0)


def check_kv_budget(path: Path, data: dict) -> list[str]:
    """Every prediction's ``kv_entries`` is (layers x KV heads) x the entries ``evict`` keeps per head
    at its rho, and ``kv_bytes`` is the same bytes per entry throughout the file.

    The number of layer-heads is one per model, so it is read off the file as the most common ratio
    (or the model's config when it is cached here); a prediction that kept more (or fewer) entries
    than the budget of its rho gives another ratio."""
    from collections import Counter

    docs = {d["doc_id"]: d for d in data["documents"]}
    ratios, rows = Counter(), []
    for i, p in enumerate(data["predictions"]):
        d = docs.get(p["doc_id"])
        if d is None:
            continue  # reported by _check_grid
        kept = kept_per_head(d["n_prefix_tokens"], d["n_doc_tokens"], p["rho"])
        rows.append((i, p, kept))
        if kept and p["kv_entries"] % kept == 0:
            ratios[p["kv_entries"] // kept] += 1
    if not rows:
        return []
    heads = _model_layer_heads(data) or (ratios.most_common(1)[0][0] if ratios else None)
    per_entry = Counter(p["kv_bytes"] / p["kv_entries"] for _, p, _ in rows if p["kv_entries"])
    bytes_per_entry = per_entry.most_common(1)[0][0] if per_entry else None
    problems, counts = [], {}
    for i, p, kept in rows:
        if heads is None or p["kv_entries"] != heads * kept:
            _limited(problems, counts, "kv_entries",
                     f"{path}: field 'predictions/{i}/kv_entries': {p['kv_entries']} at rho={p['rho']} "
                     f"(document {p['doc_id']}); evict's budget is {kept} entries per layer and head "
                     f"(prefix + kvpress's compute_n_kept) x {heads} layer-heads = {heads * kept if heads else '?'}")
        elif p["kv_entries"] and p["kv_bytes"] / p["kv_entries"] != bytes_per_entry:
            _limited(problems, counts, "kv_bytes",
                     f"{path}: field 'predictions/{i}/kv_bytes': {p['kv_bytes']} for {p['kv_entries']} entries; the "
                     f"file's other predictions use {bytes_per_entry} bytes per entry")
    return problems + _more(path, counts)


def _model_layer_heads(data: dict) -> int | None:
    """layers x KV heads of the file's model, from its converted config when cached here (else None)."""
    import json

    from .paths import cache_dir

    for cfg in sorted((cache_dir() / "models").glob(f"{data['model']['id']}-*/config.json")):
        try:
            c = json.loads(cfg.read_text())
            return int(c["num_hidden_layers"]) * int(c.get("num_key_value_heads") or c["num_attention_heads"])
        except (OSError, ValueError, KeyError):
            return None
    return None


def check_submission_hash(path: Path, data: dict, submissions_dir=None) -> list[str]:
    """The submission folder the file names exists and hashes to the stored hash (results belong to
    the code in the repository)."""
    from .spec import SpecError
    from .submission import load_submission

    subs = Path(submissions_dir) if submissions_dir is not None else _find_submissions_dir(path)
    name = data["submission"]["name"]
    folder = subs / name
    if not (folder / "submission.yaml").exists():
        return [f"{path}: field 'submission/name': no submission folder {folder} with a submission.yaml"]
    try:
        sub = load_submission(folder)
    except SpecError as exc:
        return [f"{path}: field 'submission/name': its submission does not load: {exc}"]
    problems = []
    if sub.hash() != data["submission"]["hash"]:
        problems.append(f"{path}: field 'submission/hash': {data['submission']['hash']} but {folder} hashes to "
                        f"{sub.hash()}; the submission changed since this result was produced, re-run the evaluation")
    if sub.headline_condition != data["submission"]["headline_condition"]:
        problems.append(f"{path}: field 'submission/headline_condition': '{data['submission']['headline_condition']}'"
                        f" but {folder} declares '{sub.headline_condition}'")
    return problems


def _more(path: Path, counts: dict) -> list[str]:
    return [f"{path}: ... and {n - MAX_PER_KIND} more wrong '{kind}' values"
            for kind, n in sorted(counts.items()) if n > MAX_PER_KIND]


def _check_grid(path: Path, data: dict) -> list[str]:
    """Documents and predictions agree, and every document answered every question at every (rho, condition)."""
    problems = []
    docs = [d["doc_id"] for d in data["documents"]]
    if len(set(docs)) != len(docs):
        problems.append(f"{path}: field 'documents': duplicate doc_id")
    pred_docs = {p["doc_id"] for p in data["predictions"]}
    if pred_docs - set(docs):
        problems.append(f"{path}: field 'predictions': predictions for documents not in 'documents': {sorted(pred_docs - set(docs))[:5]}")
    if set(docs) - pred_docs:
        problems.append(f"{path}: field 'documents': documents without predictions: {sorted(set(docs) - pred_docs)[:5]}")
    bad_rho = sorted({p["rho"] for p in data["predictions"]} - set(data["rhos"]))
    bad_cond = sorted({p["condition"] for p in data["predictions"]} - set(data["conditions"]))
    if bad_rho:
        problems.append(f"{path}: field 'predictions': rho values {bad_rho} not in the file's 'rhos'")
    if bad_cond:
        problems.append(f"{path}: field 'predictions': conditions {bad_cond} not in the file's 'conditions'")
    conds = sorted({p["condition"] for p in data["predictions"]})
    by_doc: dict[str, dict] = {}
    for p in data["predictions"]:
        by_doc.setdefault(p["doc_id"], {}).setdefault((p["rho"], p["condition"]), []).append(p["question_id"])
    for doc, grid in sorted(by_doc.items()):
        want = {(r, c) for r in data["rhos"] for c in conds}
        if set(grid) != want:
            missing = sorted(want - set(grid))[:3]
            problems.append(f"{path}: field 'predictions': document {doc} lacks (rho, condition) {missing}")
            continue
        qsets = {tuple(sorted(q)) for q in grid.values()}
        if len(qsets) != 1 or any(len(q) != len(set(q)) for q in grid.values()):
            problems.append(f"{path}: field 'predictions': document {doc} does not answer the same questions, once "
                            "each, at every (rho, condition)")
    return problems


def _check_protocol(path: Path, data: dict, spec) -> list[str]:
    """What makes results of different submissions comparable on the leaderboard."""
    from .datasets import load_split

    problems = []
    if data["dataset"]["split"] != "test":
        problems.append(f"{path}: field 'dataset/split': '{data['dataset']['split']}'; the leaderboard uses the test split")
    if [float(r) for r in data["rhos"]] != sorted(spec.rhos):
        problems.append(f"{path}: field 'rhos': {data['rhos']}, the spec's grid is {sorted(spec.rhos)}")
    if list(data["conditions"]) != list(spec.conditions):
        problems.append(f"{path}: field 'conditions': {data['conditions']}, the spec's are {list(spec.conditions)}")
    partial = {k: v for k, v in (data.get("slice") or {}).items() if v is not None}
    if partial:
        problems.append(f"{path}: field 'slice': {partial}; the leaderboard needs a run without --docs / --questions")
    conds = {p["condition"] for p in data["predictions"]}
    if "base" not in conds:
        problems.append(f"{path}: field 'predictions': no 'base' condition (the KV-only reference every submission reports)")
    headline = data["submission"]["headline_condition"]
    if headline not in conds:
        problems.append(f"{path}: field 'submission/headline_condition': no predictions for '{headline}'")
    try:
        ds = spec.dataset(data["dataset"]["id"])
        data_file = ds.split("test")
    except Exception:  # noqa: BLE001 - reported by _pinned_questions
        return problems
    if not data_file.path.exists():  # paper-tier data lives in the cache; checked where it is prepared
        return problems
    want = {d.doc_id: sorted(q.id for q in d.questions) for d in load_split(data_file)}
    have: dict[str, set] = {}
    for p in data["predictions"]:
        have.setdefault(p["doc_id"], set()).add(p["question_id"])
    if set(have) != set(want):
        missing = sorted(set(want) - set(have))
        problems.append(f"{path}: field 'documents': {len(have)} of the split's {len(want)} documents"
                        + (f" (missing {missing[:5]}{'...' if len(missing) > 5 else ''})" if missing else "")
                        + "; the leaderboard needs the full split (evaluate without --docs)")
    else:
        short = sorted(d for d in want if sorted(have[d]) != want[d])
        if short:
            problems.append(f"{path}: field 'predictions': documents {short[:5]} do not answer all their questions "
                            "(evaluate without --questions)")
    return problems


if __name__ == "__main__":  # the sandboxed child of check_submission_isolated: prints its problems as JSON, last
    import json
    import os
    import sys

    _problems = check_submission(sys.argv[1])
    os.write(1, (json.dumps(_problems) + "\n").encode())
