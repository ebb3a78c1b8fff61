"""Conformance checks for what lands in the repository: submissions and result files.

``check_submission(path)`` (``lorakv-bench validate submissions/<name>``) loads the
submission YAML against its schema, builds its adapter recipe and runs its compressor on the
tiny random models of :mod:`benchmark.protocol.tiny` (seconds, CPU, nothing downloaded): the press must
score exactly the document entries, (kv_heads, n_doc) per layer, deterministically, and must
leave the KV cache alone, so the framework's eviction keeps kvpress's budget of document
entries per head and every non-document entry.

``check_result_file(path)`` re-derives everything a result file claims that can be re-derived
without a model: schema, known spec hash, extracted answers, question ids / text / gold answers
against the dataset file the spec pins (sha256), or against the answer digest the package ships
where that data is absent (paper tier), per-question ROUGE-L/EM scored against those answers, the
(rho, condition) cells, every ``kv_entries`` against the budget ``evict`` keeps at its rho and
its ``kv_bytes`` from the model's KV shape and dtype, its place in ``leaderboard/results/``, the
hash of the submission folder it names, and every header field: the submission's sections equal
its YAML, the model's name the spec's, the environment and dates from fixed vocabularies and
patterns, each document's adapter present exactly when one is trained. The generations and the
adapters themselves are re-run by ``lorakv-bench verify``.

Both return a list of problems, each naming the file and field; an empty list means conformant.
"""

from __future__ import annotations

import math
import re
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


def check_submission(path: str | Path, compressors_checked: dict | None = None) -> list[str]:
    """Problems with ``submissions/<name>`` (or a submission.yaml); empty = conformant.
    ``compressors_checked`` (see :func:`check_submissions`) holds the compressor checks already run."""
    from ..protocol.spec import SpecError
    from ..protocol.submission import load_submission

    path = Path(path)
    yml = path / "submission.yaml" if path.is_dir() else path
    try:
        sub = load_submission(path)
    except SpecError as exc:
        return [str(exc)]
    except (TypeError, ValueError) as exc:  # e.g. settings the schema lets through but the dataclasses refuse
        return [f"{yml}: field 'adapter': {type(exc).__name__}: {exc}"]
    problems = _check_recipe(sub, yml)
    problems += _check_compressor(sub, yml, compressors_checked)
    return problems


def check_submissions(paths) -> list[list[str]]:
    """:func:`check_submission` of each path. A press named from kvpress or the harness (not
    submission code) with the same settings as an earlier submission's is checked once: its checks
    read nothing else of the submission, and their problems are reported under each one's file."""
    checked: dict[str, tuple[Path, list[str]]] = {}
    return [check_submission(p, checked) for p in paths]


#: The checks ``validate -v`` lists, in the order they run (tests/test_conformance.py keeps these
#: equal to the calls in check_submission, _check_press_on_tiny, check_result_file).
SUBMISSION_CHECKS = (
    "load_submission", "_check_recipe", "_check_compressor",
    *(f"{c} (on the tiny {', '.join(CONFORMANCE_MODELS)} models)" for c in (
        "check_cache_untouched", "check_score_shape", "check_eviction_budget", "check_deterministic",
        "check_declared_rho_dependence")),
    "check_sandboxed_plans (a press of the submission's own code)",
)
RESULT_CHECKS = (
    "load_result", "_pinned_questions", "check_spec_hash", "problems_of_place", "check_header_keys", "check_dates",
    "check_model_name", "check_environment", "check_answers_against_digest (data absent)",
    "check_predictions_extracted", "check_predictions_against_dataset", "check_prediction_scores", "check_cells",
    "check_kv_budget", "check_document_adapters", "_check_grid", "_check_protocol (full protocol)",
    "_named_submission", "check_submission_hash", "check_submission_sections",
)

#: seconds ``validate`` gives one submission's checks in the sandbox
VALIDATE_TIMEOUT_S = 60.0


def check_submission_isolated(path: str | Path, timeout: float = VALIDATE_TIMEOUT_S) -> list[str]:
    """:func:`check_submission` in the sandbox that runs submission code (:mod:`benchmark.trust.worker`:
    no network, the package read-only without its data, no checkout, no cache), so a submission's
    import-time code can neither read an answer nor change a checker. A child that ends without
    reporting (``os._exit``, a crash, the time limit) is a failure.

    What the child reports is the submission's own code's word; for a press of its own this
    process then asks the sandbox for plans on a tiny model and checks them itself
    (:func:`check_sandboxed_plans`), as ``evaluate`` checks every plan."""
    return check_submissions_isolated([path], timeout)[str(path)]


def check_submissions_isolated(paths, timeout: float = VALIDATE_TIMEOUT_S) -> dict[str, list[str]]:
    """:func:`check_submission_isolated` of each path, keyed by the path as given. Submissions with no
    code of their own (kvpress presses by name, no hook) share one sandboxed process: none of them
    runs submission code. Each submission with code, or whose YAML does not load, gets its own."""
    from ..protocol.submission import load_submission

    shared, alone = [], []
    for p in paths:
        try:
            (alone if load_submission(p).has_code else shared).append(p)
        except Exception:  # noqa: BLE001 - its own child reports the problem
            alone.append(p)
    out = _check_in_sandbox(shared, timeout * len(shared)) if shared else {}
    for p in alone:
        out |= _check_in_sandbox([p], timeout)
        if not out[str(p)]:
            out[str(p)] = check_sandboxed_plans(Path(p), timeout)
    return out


def _check_in_sandbox(paths: list, timeout: float) -> dict[str, list[str]]:
    import json
    import subprocess
    import sys
    import tempfile

    from .worker import _child_env, _limits, bwrap_works, sandbox_args

    folders = [(Path(p) if Path(p).is_dir() else Path(p).parent).resolve() for p in paths]
    cmd = [sys.executable, "-m", "benchmark.trust.conformance", *(str(Path(p).resolve()) for p in paths)]
    if bwrap_works():
        cmd = sandbox_args(folders) + cmd
    with tempfile.TemporaryDirectory(prefix="lorakv-validate-") as tmp:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env(), cwd=tmp,
                                  preexec_fn=_limits("cpu"))
        except subprocess.TimeoutExpired:
            return {str(p): [f"{p}: the conformance check did not finish within {timeout:.0f} s"] for p in paths}
    lines = proc.stdout.strip().splitlines()
    try:
        reported = json.loads(lines[-1]) if lines else None
        if not (isinstance(reported, list) and len(reported) == len(paths)
                and all(isinstance(ps, list) and all(isinstance(x, str) for x in ps) for ps in reported)):
            raise ValueError("not a list of problem lists, one per submission")
    except ValueError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {str(p): [f"{p}: the conformance check ended without a result (exit code {proc.returncode}; "
                         f"{tail[0]:.300})"] for p in paths}
    return {str(p): ps for p, ps in zip(paths, reported)}


def check_sandboxed_plans(path: Path, timeout: float = VALIDATE_TIMEOUT_S) -> list[str]:
    """For a press of the submission's own: the plans the sandbox returns on the tiny models, checked
    here (shape, exact budget per layer and KV head), and the same on a second request. The tiny
    models' sandboxed processes run side by side (one thread each waits on its own)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..protocol.submission import load_submission
    from ..protocol.tiny import tiny_model

    sub = load_submission(path)
    if not sub.press_is_code:
        return []
    models = [(kind, *tiny_model(kind)) for kind in CONFORMANCE_MODELS]  # here: each seeds torch's global RNG
    with ThreadPoolExecutor(max_workers=len(models)) as pool:
        per_model = list(pool.map(lambda m: _check_sandboxed_plan(sub, *m, timeout), models))
    return [p for problems in per_model for p in problems]


def _check_sandboxed_plan(sub, kind: str, model, tok, timeout: float) -> list[str]:
    from ..protocol.models import PromptRenderer
    from ..protocol.plan import PlanError, check_plan
    from ..protocol.spec import load_spec
    from .worker import SubmissionProcess, WorkerError

    yml = sub.path / "submission.yaml"
    rhos = [r for r in CONFORMANCE_RHOS if 0 < r < 1]
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
        return [str(exc) if str(exc).startswith(str(yml)) else f"{where}: {exc}"]
    return []


def _check_recipe(sub, yml: Path) -> list[str]:
    from ..config import BASE, CONDITIONS
    from ..protocol.adapters import OBJECTIVES

    problems = []
    headline = sub.headline_condition
    if headline not in CONDITIONS:
        problems.append(f"{yml}: field 'headline_condition': unknown condition '{headline}' "
                        f"(have: {sorted(CONDITIONS)})")
    recipe = sub.recipe
    if not recipe.enabled:
        if headline not in sub.active_conditions(CONDITIONS):
            problems.append(f"{yml}: field 'headline_condition': '{headline}' needs an adapter, "
                            "but adapter.recipe is 'none' "
                            f"(only the {BASE} condition runs); use '{BASE}' or choose a recipe")
        return problems
    if recipe.train.objective not in OBJECTIVES:
        problems.append(f"{yml}: field 'adapter/recipe': unknown objective '{recipe.train.objective}' "
                        f"(have: {OBJECTIVES})")
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
    from ..protocol.tiny import tiny_model

    model, _ = tiny_model("llama")
    try:
        model.add_adapter(cfg, adapter_name="conformance")
    except Exception as exc:  # noqa: BLE001
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and not list(m.children())})
        return [f"{yml}: field 'adapter/lora/target_modules': the adapter does not attach to a llama-style model: "
                f"{type(exc).__name__}: {exc} (leaf modules: {names})"]
    return []


def _check_hook(recipe, yml: Path) -> list[str]:
    from ..protocol.datasets import TrainingView

    field = "adapter/train/hook"
    view = TrainingView("conformance-doc", CONFORMANCE_DOCUMENT, CONFORMANCE_TRAIN_QA)
    module_name = recipe.train.hook.split(":")[0]
    module_file = Path(recipe.code_dir or ".") / (module_name.replace(".", "/") + ".py")
    if not module_file.exists():
        return [f"{yml}: field '{field}': '{recipe.train.hook}' names {module_file.name}, which is not in the "
                f"submission folder {module_file.parent}"]
    from ..paths import import_from

    try:
        out = import_from(recipe.code_dir, recipe.train.hook)(view)
    except Exception as exc:  # noqa: BLE001
        return [f"{yml}: field '{field}': '{recipe.train.hook}' failed on a sample TrainingView: "
                f"{type(exc).__name__}: {exc}"]
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


def _check_compressor(sub, yml: Path, checked: dict | None = None) -> list[str]:
    """The compressor contract on the tiny models; with ``checked`` (settings -> (file, problems)),
    a press that names no submission code (nested presses included) and was checked with the same
    settings is not run again."""
    if checked is None or any(":" in str(name) for name in _press_names(sub.compressor_cfg)):
        return _check_compressor_on_tiny(sub, yml)
    import json

    key = json.dumps(sub.compressor_cfg, sort_keys=True, default=repr)
    if key not in checked:
        checked[key] = (yml, _check_compressor_on_tiny(sub, yml))
    first, problems = checked[key]
    return [str(yml) + p[len(str(first)):] if p.startswith(str(first)) else p for p in problems]


def _press_names(section):
    """Every press a compressor section names, its nested presses' too (``compression._build_nested``)."""
    if isinstance(section, dict):
        if isinstance(section.get("press"), str):
            yield section["press"]
        for value in section.values():
            yield from _press_names(value)
    elif isinstance(section, list):
        for value in section:
            yield from _press_names(value)


def _check_compressor_on_tiny(sub, yml: Path) -> list[str]:
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
    from ..protocol.compression import prefill
    from ..protocol.models import PromptRenderer
    from ..protocol.spec import load_spec
    from ..protocol.tiny import tiny_model

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

    from ..protocol.compression import evict

    where, kv, scores, span, ref_kv, n_doc = t.where, t.kv, t.scores, t.span, t.ref_kv, t.n_doc
    kv_heads, n_layers = t.kv_heads, t.n_layers
    problems = []
    kept = {}
    for rho in CONFORMANCE_RHOS:
        pkv, n_keep = evict(kv, scores, span, rho)
        budget = compute_n_kept(n_doc, rho)
        if n_keep != budget:
            problems.append(f"{where}: rho={rho} keeps {n_keep} document entries per head, "
                            f"kvpress's budget is {budget}")
        for i, ((k, v), (rk, rv)) in enumerate(zip(pkv, ref_kv)):
            if getattr(pkv, "keep", None) is not None:  # head-wise budgets: per-head (and per-layer) counts differ
                problems += _check_ragged_layer(pkv.keep[i], k, rk, span, f"{where}: rho={rho} layer {i}")
                continue
            if k.shape[2] != span[0] + budget:
                problems.append(f"{where}: rho={rho} layer {i}: {k.shape[2]} entries per head after eviction, expected "
                                f"{span[0]} prefix + {budget} document = {span[0] + budget}")
                break
            if not (torch.equal(k[:, :, :span[0]], rk[:, :, :span[0]])
                    and torch.equal(v[:, :, :span[0]], rv[:, :, :span[0]])):
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

    from ..protocol.compression import evict, prefill

    where, model, ids, span, tok, press, sub = t.where, t.model, t.ids, t.span, t.tok, t.press, t.sub
    problems = []
    for label, again in (("a second run of the same press", press),
                         ("a fresh instance of the press", sub.make_compressor())):
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

    from ..protocol.compression import prefill, score_depends_on_rho

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
    """Every head's kept rows (heads, n_keep, dim) are rows of ref (heads, n_doc, dim), in their original order.
    Rows are compared as ``==`` compares them, through their bytes: in float64 (exact for every
    dtype a cache holds) plus 0.0, so -0.0 is 0.0, and a kept NaN equals no row."""
    if kept.shape[1] == 0:
        return True
    if bool(kept.isnan().any()):
        return False
    for kept_h, ref_h in zip((kept.double().cpu() + 0.0).numpy(), (ref.double().cpu() + 0.0).numpy()):
        first: dict[bytes, int] = {}
        for i, row in enumerate(ref_h):
            first.setdefault(row.tobytes(), i)  # the first matching document position of a row
        pos = [first.get(row.tobytes()) for row in kept_h]
        if None in pos or any(b <= a for a, b in zip(pos, pos[1:])):
            return False
    return True


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
    from ..protocol.results import load_result
    from ..protocol.spec import SpecError

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
    problems += check_header_keys(path, data, spec)
    problems += check_dates(path, data)
    problems += check_model_name(path, data, spec)
    problems += check_environment(path, data, spec)
    problems += pinned_problems
    if pinned is None:
        problems += check_answers_against_digest(path, data, spec, full_protocol)
    problems += check_predictions_extracted(path, data, answer_prefix, spec)
    problems += check_predictions_against_dataset(path, data, pinned)
    problems += check_prediction_scores(path, data, pinned, spec)
    problems += check_cells(path, data)
    problems += check_kv_budget(path, data, spec)
    problems += check_document_adapters(path, data)
    problems += _check_grid(path, data)
    if full_protocol and spec is not None:
        problems += _check_protocol(path, data, spec)
    sub, sub_problems = _named_submission(path, data, submissions_dir)
    problems += sub_problems
    if sub is not None:
        problems += check_submission_hash(path, data, sub)
        problems += check_submission_sections(path, data, sub)
    return problems


def _result_spec(path: Path, data: dict):
    """(spec, answer prefix, problems) of the tier and model the file names."""
    from ..protocol.spec import SpecError, load_spec, spec_name

    try:
        spec = load_spec(spec_name(data))
        if is_own_model(data, spec):  # a model of one's own runs with the spec's prompt
            return spec, spec.prompt.answer_prefix, []
        return spec, spec.prompt_for(spec.model(data["model"]["id"])).answer_prefix, []
    except SpecError as exc:
        return None, None, [f"{path}: field 'model/id': {exc}"]


def is_own_model(data: dict, spec) -> bool:
    """The file is of a model the spec does not name (``evaluate --model PATH`` or a Hub id): its
    ``model`` says where it came from (``source``). The checks then read the model's KV shape and
    dtype from the file's ``model`` (:data:`benchmark.config.OWN_MODEL_KEYS`), as the run derived
    them from the model's config; a spec model's come from the spec and ``config.KV_SHAPES`` only."""
    return (spec is not None and isinstance(data["model"], dict) and "source" in data["model"]
            and data["model"]["id"] not in {m.id for m in spec.models})


def check_spec_hash(path: Path, data: dict) -> list[str]:
    """The file was produced under a spec shipped in this version."""
    from ..protocol.spec import known_spec_hashes

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
    from ..protocol.results import result_path_of

    expected = result_path_of("", data).parts
    if tuple(path.parts[-4:]) != expected:
        return [f"{path}: field 'submission/name', 'tier', 'model/id', 'dataset': the file must live at "
                f"<results>/{'/'.join(expected)}, it is at .../{'/'.join(path.parts[-4:])}"]
    return []


#: Header fields and what each may hold. Where no spec or submission fixes a value exactly, the
#: pattern is conservative, so a value that passes is also safe to print on the leaderboard.
HEADER_KEYS = {"model": ("id", "name"), "dataset": ("id", "split", "sha256"),
               "submission": ("name", "hash", "compressor", "adapter", "headline_condition")}
VERSION_KEYS = ("lorakv_bench", "python", "torch", "transformers", "peft", "kvpress")
ENVIRONMENT_KEYS = (*VERSION_KEYS, "device", "torch_threads", "dtype", "sandbox")  # what results.environment writes
#: recorded where they apply: the GPU's name on CUDA; the decoding batch size and batching scheme
#: (results made before they were recorded lack them, and verify then decodes in EvalRequest's
#: default batch size and the "cache" scheme)
OPTIONAL_ENVIRONMENT_KEYS = ("gpu_name", "batch_size", "batching")
VERSION_PATTERN = re.compile(r"[0-9A-Za-z.+\-]{1,40}")
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps")
GPU_NAME_PATTERN = re.compile(r"[A-Za-z0-9 ._()\-]{1,64}")
TIMESTAMP_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+00:00")  # results.now(): UTC, whole seconds


def check_header_keys(path: Path, data: dict, spec=None) -> list[str]:
    """``model``, ``dataset`` and ``submission`` hold only the fields the writer writes (``model``
    also :data:`~benchmark.config.OWN_MODEL_KEYS`, all of them, for a model the spec does not name)."""
    from ..config import OWN_MODEL_KEYS

    allowed = HEADER_KEYS | ({"model": HEADER_KEYS["model"] + OWN_MODEL_KEYS} if is_own_model(data, spec) else {})
    problems = [f"{path}: field '{section}/{key}': not a field of a result file (have: {', '.join(keys)})"
                for section, keys in allowed.items() for key in sorted(set(data[section]) - set(keys))]
    if is_own_model(data, spec):
        problems += [f"{path}: field 'model/{key}': missing (a model of one's own records it)"
                     for key in OWN_MODEL_KEYS if key not in data["model"]]
    return problems


def check_dates(path: Path, data: dict) -> list[str]:
    """``created`` and ``updated`` are UTC timestamps as ``results.now()`` writes them, created first."""
    import datetime as dt

    problems, when = [], {}
    for key in ("created", "updated"):
        value = data[key]
        if not TIMESTAMP_PATTERN.fullmatch(value):
            problems.append(f"{path}: field '{key}': {value!r:.80} is not a UTC timestamp YYYY-MM-DDTHH:MM:SS+00:00")
            continue
        try:
            when[key] = dt.datetime.fromisoformat(value)
        except ValueError:
            problems.append(f"{path}: field '{key}': {value!r} is not a date")
    if len(when) == 2 and when["created"] > when["updated"]:
        problems.append(f"{path}: field 'updated': {data['updated']} is before 'created' {data['created']}")
    return problems


def check_model_name(path: Path, data: dict, spec) -> list[str]:
    """``model.name`` is the spec's name for ``model.id``."""
    from ..protocol.spec import SpecError

    if spec is None:
        return []
    if is_own_model(data, spec):
        return check_own_model(path, data["model"])
    try:
        name = spec.model(data["model"]["id"]).name
    except SpecError:
        return []  # reported by _result_spec
    if data["model"]["name"] != name:
        return [f"{path}: field 'model/name': {data['model']['name']!r:.80}, the spec names model "
                f"'{data['model']['id']}' {name!r}"]
    return []


_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def check_own_model(path: Path, model: dict) -> list[str]:
    """The ``model`` of a model the spec does not name, as :func:`benchmark.protocol.models.model_header`
    writes it: an id of :data:`~benchmark.config.OWN_MODEL_ID` (shown on the leaderboard), the
    name equal to it, a source, a revision (a commit or a sha256), the chat template's sha256 or
    null, a dtype and the (layers, KV heads, head_dim) the KV checks use."""
    from ..config import DTYPE_BYTES, OWN_MODEL_ID, OWN_SOURCES

    where, problems = f"{path}: field 'model", []
    mid = model["id"]
    if not _matches(OWN_MODEL_ID, mid):
        problems.append(f"{where}/id': {mid!r:.80} is not a model folder's name or a Hub id (letters, digits, '.', "
                        "'_', '-', one '/')")
    if model["name"] != mid:
        problems.append(f"{where}/name': {model['name']!r:.80}; a model of one's own is named by its id {mid!r:.80}")
    if model.get("source") not in OWN_SOURCES:
        problems.append(f"{where}/source': {model.get('source')!r:.40}; expected one of {', '.join(OWN_SOURCES)}")
    rev = model.get("revision")
    if not (_matches(_SHA256, rev) or _matches(_COMMIT, rev)):
        problems.append(f"{where}/revision': {rev!r:.80} is neither a Hub commit (40 hex) nor a sha256 (64 hex)")
    tpl = model.get("chat_template_sha256")
    if tpl is not None and not _matches(_SHA256, tpl):
        problems.append(f"{where}/chat_template_sha256': {tpl!r:.80} is not a sha256 (or null: no template)")
    if model.get("dtype") not in DTYPE_BYTES:
        problems.append(f"{where}/dtype': {model.get('dtype')!r:.40}; expected one of {', '.join(DTYPE_BYTES)}")
    if own_kv_shape(model) is None:
        problems.append(f"{where}/kv_shape': {model.get('kv_shape')!r:.80}; expected [layers, KV heads, head_dim], "
                        "positive integers")
    return problems


def own_kv_shape(model: dict) -> tuple[int, int, int] | None:
    """A model of one's own's recorded (layers, KV heads, head_dim), or None when it is not that."""
    shape = model.get("kv_shape")
    if (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in shape)):
        return tuple(shape)
    return None


def run_dtypes(spec, model_id: str, data: dict | None = None) -> tuple[str, ...]:
    """The dtypes a model of ``spec`` runs in: ``--dtype``'s choices or the spec's own dtype (for a
    model of one's own, the dtype of its config, recorded in ``data``'s ``model``)."""
    from ..config import DTYPE_BYTES, RUN_DTYPES
    from ..protocol.spec import SpecError

    if data is not None and is_own_model(data, spec):
        dtype = data["model"].get("dtype")
        return tuple(dict.fromkeys(RUN_DTYPES + ((dtype,) if dtype in DTYPE_BYTES else ())))
    try:
        own = (spec.model(model_id).dtype,) if spec is not None else ()
    except SpecError:
        own = ()
    return tuple(dict.fromkeys(RUN_DTYPES + own))


def check_environment(path: Path, data: dict, spec) -> list[str]:
    """``environment`` holds what ``results.environment`` writes and nothing else, each value from
    a fixed vocabulary or pattern: versions, the device, a positive thread count, a dtype the model
    runs in, the sandbox, and a GPU name only on a CUDA device."""
    from ..config import BATCHINGS
    from .worker import SANDBOXES

    env, problems = data["environment"], []
    where = f"{path}: field 'environment"
    for key in sorted(set(env) - set(ENVIRONMENT_KEYS) - set(OPTIONAL_ENVIRONMENT_KEYS)):
        problems.append(f"{where}/{key}': not a field of a result's environment (have: {', '.join(ENVIRONMENT_KEYS)}, "
                        f"{', '.join(OPTIONAL_ENVIRONMENT_KEYS)})")
    for key in ENVIRONMENT_KEYS:
        if key not in env:
            problems.append(f"{where}/{key}': missing (the evaluation records it)")
    for key in VERSION_KEYS:
        if key in env and not _matches(VERSION_PATTERN, env[key]):
            problems.append(f"{where}/{key}': {env[key]!r:.80} is not a version string")
    if "device" in env and not _matches(DEVICE_PATTERN, env["device"]):
        problems.append(f"{where}/device': {env['device']!r:.80}; expected cpu, cuda, cuda:N or mps")
    for key in ("torch_threads", "batch_size"):
        value = env.get(key, 1)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            problems.append(f"{where}/{key}': {value!r:.80} is not a positive integer")
    dtypes = run_dtypes(spec, data["model"]["id"], data)
    if "dtype" in env and env["dtype"] not in dtypes:
        problems.append(f"{where}/dtype': {env['dtype']!r:.80}; the model runs in {', '.join(dtypes)}")
    if "batching" in env and env["batching"] not in BATCHINGS:
        problems.append(f"{where}/batching': {env['batching']!r:.80}; expected one of {', '.join(BATCHINGS)}")
    if "sandbox" in env and env["sandbox"] not in SANDBOXES:
        problems.append(f"{where}/sandbox': {env['sandbox']!r:.80}; expected one of {', '.join(SANDBOXES)}")
    if "gpu_name" in env:
        if not _matches(GPU_NAME_PATTERN, env["gpu_name"]):
            problems.append(f"{where}/gpu_name': {env['gpu_name']!r:.80} is not a GPU name (letters, digits, "
                            "spaces and ._()- only, at most 64)")
        elif not str(env.get("device", "")).startswith("cuda"):
            problems.append(f"{where}/gpu_name': a GPU name on device {env.get('device')!r:.40}; only CUDA runs "
                            "record one")
    return problems


def _matches(pattern: re.Pattern, value) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _pinned_questions(path: Path, data: dict, spec) -> tuple[dict | None, list[str]]:
    """``{(doc_id, question_id): Question}`` of the dataset split the file names, read from the file
    the spec pins (its sha256 verified); None when that data is not on this machine (paper tier)."""
    from ..protocol.datasets import load_split
    from ..protocol.spec import SpecError

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


def check_answers_against_digest(path: Path, data: dict, spec, full_protocol: bool = True) -> list[str]:
    """Where the pinned data is not on this machine (the paper tier's prepared data), the gold
    answers and question text of every prediction, and with ``full_protocol`` the questions covered,
    are checked against the answer digest the package ships for the split (made by ``prepare-data``,
    :func:`paper_data.write_answer_digest`). Without a digest the answers cannot be checked, and
    the file is refused: the scores would rest on answers the file chose itself."""
    from ..paper.paper_data import (
        AnswerDigestError,
        answer_digest_path,
        answers_sha256,
        load_answer_digest,
        text_sha256,
    )
    from ..protocol.spec import SpecError

    if spec is None:
        return []
    ds = data["dataset"]
    try:
        data_file = spec.dataset(ds["id"]).split(ds["split"])
    except SpecError:
        return []  # reported by _pinned_questions
    if data_file.path.exists():
        return []  # checked against the data itself
    digest_file = answer_digest_path(ds["id"], ds["split"])
    if not digest_file.exists():
        return [f"{path}: field 'dataset/id': the gold answers of {ds['id']} ({ds['split']}) cannot be checked: its "
                f"data {data_file.path} is not on this machine and the package has no answer digest {digest_file}; "
                f"whoever has the data runs `lorakv-bench prepare-data {ds['id']} --source PATH` and commits that file"]
    try:
        digest = load_answer_digest(digest_file)
    except AnswerDigestError as exc:
        return [f"{path}: field 'dataset/id': {exc}"]
    if digest["normalization"] != spec.metric.normalization:
        return [f"{path}: field 'dataset/id': the answer digest {digest_file} normalises answers the "
                f"'{digest['normalization']}' way, spec {spec.spec_version} scores them the "
                f"'{spec.metric.normalization}' way; run prepare-data again"]
    if data_file.sha256 is not None and digest.get("data_sha256") != data_file.sha256:
        return [f"{path}: field 'dataset/sha256': the answer digest {digest_file} was made from data with sha256 "
                f"{digest.get('data_sha256')}, spec {spec.spec_version} pins {data_file.sha256}; "
                "run prepare-data again"]
    questions = digest["questions"]
    normalization = digest["normalization"]
    problems, counts, seen = [], {}, set()
    for i, p in enumerate(data["predictions"]):
        key = f"{p['doc_id']}/{p['question_id']}"
        seen.add(key)
        want = questions.get(key)
        if want is None:
            _limited(problems, counts, "question_id",
                     f"{path}: field 'predictions/{i}/question_id': '{p['question_id']}' is not a question of document "
                     f"'{p['doc_id']}' in {ds['id']} ({ds['split']}), by the answer digest {digest_file.name}")
            continue
        if answers_sha256(p["answers"], normalization) != want["answers"]:
            _limited(problems, counts, "answers",
                     f"{path}: field 'predictions/{i}/answers': {p['answers']!r:.120} are not the gold answers of "
                     f"{p['question_id']} (their digest in {digest_file.name} differs)")
        if "question" in p and text_sha256(p["question"]) != want["question"]:
            _limited(problems, counts, "question",
                     f"{path}: field 'predictions/{i}/question': {p['question']!r:.120} is not the question "
                     f"{p['question_id']} asks (its digest in {digest_file.name} differs)")
    if full_protocol and set(questions) - seen:
        missing = sorted(set(questions) - seen)
        problems.append(f"{path}: field 'predictions': {len(missing)} of the split's {len(questions)} questions "
                        f"unanswered (e.g. {missing[0]}); the leaderboard needs the full split")
    return problems + _more(path, counts)


def check_predictions_extracted(path: Path, data: dict, answer_prefix: str | None, spec=None) -> list[str]:
    """Each stored ``prediction`` is the answer the spec's extraction takes from its ``generation``."""
    if answer_prefix is None:
        return []
    scoring = _scoring(spec)
    problems, counts = [], {}
    for i, p in enumerate(data["predictions"]):
        extracted = scoring.extract(p["generation"], answer_prefix)
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


def check_prediction_scores(path: Path, data: dict, pinned: dict | None, spec=None) -> list[str]:
    """``rouge_l`` / ``exact_match`` equal the scores, under the spec's metric, of ``prediction``
    against the pinned gold answers (the answers stored in the file when the pinned data is not on
    this machine: :func:`check_answers_against_digest` vouches for those)."""
    scoring = _scoring(spec)
    problems, counts = [], {}
    for i, p in enumerate(data["predictions"]):
        q = pinned.get((p["doc_id"], p["question_id"])) if pinned is not None else None
        if pinned is not None and q is None:
            continue  # reported by check_predictions_against_dataset
        s = scoring.score(p["prediction"], q.answers if q is not None else p["answers"])
        for metric in ("rouge_l", "exact_match"):
            if not _close(s[metric], p[metric]):
                _limited(problems, counts, metric,
                         f"{path}: field 'predictions/{i}/{metric}': stored {p[metric]!r}, recomputed "
                         f"{s[metric]!r} from its prediction and the gold answers")
    return problems + _more(path, counts)


def check_cells(path: Path, data: dict) -> list[str]:
    """The ``cells`` equal the aggregation of the predictions."""
    from ..protocol.results import aggregate

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


def _scoring(spec):
    """The spec's :class:`~benchmark.protocol.metrics.Scoring`; without a spec, the defaults (the mini tier's)."""
    from ..protocol.metrics import Scoring

    return spec.scoring() if spec is not None else Scoring()


def kept_per_head(n_prefix: int, n_doc: int, rho: float, scoring) -> int:
    """KV entries per layer and KV head after ``compression.evict`` at ``rho``: every prefix entry
    plus the spec's budget of document entries (``scoring.kept``, the rule ``evict`` applies)."""
    return n_prefix + scoring.kept(n_doc, rho)


def check_kv_budget(path: Path, data: dict, spec=None) -> list[str]:
    """Every prediction's ``kv_entries`` is (layers x KV heads) x the entries ``evict`` keeps per head
    at its rho, and its ``kv_bytes`` what ``compression.kv_bytes`` counts for them: a key and a value
    of head_dim elements per entry, in the dtype the model ran in. The shape of a spec model is the
    model's (``config.KV_SHAPES``), so neither is read off the file itself; a model of one's own has
    no entry there, and its shape is the one the run derived from its config and recorded.
    ``spec``: the spec of the file's tier (:func:`_result_spec`), which names the file's model unless
    it is a model of one's own."""
    from ..config import DTYPE_BYTES, KV_SHAPES

    model_id = data["model"]["id"]
    own = is_own_model(data, spec)
    if own:  # derived from the model's config by the run (see is_own_model)
        shape = own_kv_shape(data["model"])
        if shape is None:
            return []  # reported by check_own_model
    elif model_id not in KV_SHAPES:
        return [f"{path}: field 'model/id': no KV shape known for model '{model_id}', so kv_entries and kv_bytes "
                "cannot be checked; add its (layers, KV heads, head_dim) to config.KV_SHAPES"]
    else:
        shape = KV_SHAPES[model_id]
    layers, kv_heads, head_dim = shape
    heads = layers * kv_heads
    dtype = data["environment"].get("dtype")
    per_entry = 2 * head_dim * DTYPE_BYTES[dtype] if dtype in run_dtypes(spec, model_id, data) else None
    scoring = _scoring(spec)
    # a model of one's own runs with the spec's prompt
    prompt = None if spec is None else spec.prompt if own else spec.prompt_for(spec.model(model_id))
    no_context = prompt is not None and prompt.no_context is not None
    docs = {d["doc_id"]: d for d in data["documents"]}
    problems, counts = [], {}
    for i, p in enumerate(data["predictions"]):
        d = docs.get(p["doc_id"])
        if d is None:
            continue  # reported by _check_grid
        kept = kept_per_head(d["n_prefix_tokens"], d["n_doc_tokens"], p["rho"], scoring)
        if p["rho"] >= 1 and no_context:  # the no-context prompt's prefix, recorded per document
            if "n_no_context_prefix_tokens" not in d:
                _limited(problems, counts, "no_context",
                         f"{path}: field 'documents/{p['doc_id']}/n_no_context_prefix_tokens': missing; spec "
                         f"{spec.spec_version} answers rho = 1 with its no-context prompt, whose prefix it counts")
                continue
            kept = d["n_no_context_prefix_tokens"]
        if p["kv_entries"] != heads * kept:
            _limited(problems, counts, "kv_entries",
                     f"{path}: field 'predictions/{i}/kv_entries': {p['kv_entries']} at rho={p['rho']} "
                     f"(document {p['doc_id']}); evict's budget is {kept} entries per layer and head "
                     f"(prefix + {scoring.budget} budget) x {heads} layer-heads of {model_id} = {heads * kept}")
        elif per_entry is not None and p["kv_bytes"] != p["kv_entries"] * per_entry:
            _limited(problems, counts, "kv_bytes",
                     f"{path}: field 'predictions/{i}/kv_bytes': {p['kv_bytes']} for {p['kv_entries']} entries; "
                     f"each holds a key and a value of {head_dim} {dtype} elements, {per_entry} bytes, so "
                     f"{p['kv_entries'] * per_entry}")
    return problems + _more(path, counts)


def check_document_adapters(path: Path, data: dict) -> list[str]:
    """Where the submission trains an adapter and a condition of the file uses it, every document
    records it: ``bytes`` a positive integer, the same for every document (one recipe on one model
    has one parameter count), and its first and final training loss as numbers (the leaderboard
    lists an entry whose losses are not finite apart, as diverged). Otherwise ``adapter`` is null.
    That the adapter is what its recipe trains is what ``lorakv-bench verify`` re-runs."""
    from ..config import uses_adapter

    recipe = data["submission"]["adapter"].get("recipe", "none")
    conds = {p["condition"] for p in data["predictions"]}
    needed = recipe != "none" and any(uses_adapter(c) for c in conds)
    problems, counts, sizes = [], {}, set()
    for i, d in enumerate(data["documents"]):
        ad = d["adapter"]
        where = f"{path}: field 'documents/{i}/adapter"
        if not needed:
            if ad is not None:
                _limited(problems, counts, "adapter", f"{where}': an adapter, but recipe '{recipe}' and conditions "
                         f"{sorted(conds)} use none; expected null")
            continue
        if ad is None:
            _limited(problems, counts, "adapter", f"{where}': null, but recipe '{recipe}' trains one for conditions "
                     f"{sorted(c for c in conds if uses_adapter(c))}")
            continue
        size = ad.get("bytes")
        if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
            _limited(problems, counts, "adapter/bytes", f"{where}/bytes': {size!r:.40}; an adapter's size is a "
                     "positive number of bytes")
        else:
            sizes.add(size)
        for key in ("first_loss", "final_loss"):
            loss = ad.get(key)
            if not (isinstance(loss, (int, float)) and not isinstance(loss, bool)):
                _limited(problems, counts, f"adapter/{key}", f"{where}/{key}': {loss!r:.40}; the training loss is "
                         "recorded as a number")
    if len(sizes) > 1:
        problems.append(f"{path}: field 'documents': adapters of {len(sizes)} different sizes ({sorted(sizes)[:3]} "
                        f"bytes); one recipe on one model trains adapters of one size")
    return problems + _more(path, counts)


def _named_submission(path: Path, data: dict, submissions_dir=None):
    """(the submission the file names, loaded from its folder, or None; problems)."""
    from ..protocol.spec import SpecError
    from ..protocol.submission import load_submission

    subs = Path(submissions_dir) if submissions_dir is not None else _find_submissions_dir(path)
    folder = subs / data["submission"]["name"]
    if not (folder / "submission.yaml").exists():
        return None, [f"{path}: field 'submission/name': no submission folder {folder} with a submission.yaml"]
    try:
        return load_submission(folder), []
    except SpecError as exc:
        return None, [f"{path}: field 'submission/name': its submission does not load: {exc}"]


def check_submission_hash(path: Path, data: dict, sub) -> list[str]:
    """The submission folder the file names hashes to the stored hash (results belong to the code
    in the repository)."""
    if sub.hash() != data["submission"]["hash"]:
        return [f"{path}: field 'submission/hash': {data['submission']['hash']} but {sub.path} hashes to "
                f"{sub.hash()}; the submission changed since this result was produced, re-run the evaluation"]
    return []


def check_submission_sections(path: Path, data: dict, sub) -> list[str]:
    """``submission.compressor``, ``adapter`` and ``headline_condition`` are what the submission's
    YAML declares (the leaderboard shows them and judges leakage by them)."""
    declared = {"compressor": sub.compressor_cfg, "adapter": sub.raw["adapter"],
                "headline_condition": sub.headline_condition}
    return [f"{path}: field 'submission/{key}': {_short(data['submission'][key])} but {sub.path / 'submission.yaml'} "
            f"declares {_short(want)}" for key, want in declared.items() if data["submission"][key] != want]


def _short(value, limit: int = 120) -> str:
    import json

    text = json.dumps(value, sort_keys=True, ensure_ascii=True)
    return text if len(text) <= limit else text[:limit] + "..."


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
        problems.append(f"{path}: field 'predictions': predictions for documents not in 'documents': "
                        f"{sorted(pred_docs - set(docs))[:5]}")
    if set(docs) - pred_docs:
        problems.append(f"{path}: field 'documents': documents without predictions: "
                        f"{sorted(set(docs) - pred_docs)[:5]}")
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
    from ..config import BASE
    from ..protocol.datasets import load_split

    problems = []
    if data["dataset"]["split"] != "test":
        problems.append(f"{path}: field 'dataset/split': '{data['dataset']['split']}'; "
                        "the leaderboard uses the test split")
    if [float(r) for r in data["rhos"]] != sorted(spec.rhos):
        problems.append(f"{path}: field 'rhos': {data['rhos']}, the spec's grid is {sorted(spec.rhos)}")
    if list(data["conditions"]) != list(spec.conditions):
        problems.append(f"{path}: field 'conditions': {data['conditions']}, the spec's are {list(spec.conditions)}")
    partial = {k: v for k, v in (data.get("slice") or {}).items() if v is not None}
    if partial:
        problems.append(f"{path}: field 'slice': {partial}; the leaderboard needs a run without --docs / --questions")
    conds = {p["condition"] for p in data["predictions"]}
    if BASE not in conds:
        problems.append(f"{path}: field 'predictions': no '{BASE}' condition "
                        "(the KV-only reference every submission reports)")
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


if __name__ == "__main__":  # the sandboxed child of check_submissions_isolated: one JSON list of problem lists, last
    import json
    import os
    import sys

    _problems = check_submissions(sys.argv[1:])
    os.write(1, (json.dumps(_problems) + "\n").encode())
    sys.stderr.flush()
    os._exit(0)  # without the interpreter's teardown (seconds with torch loaded): the report is written
