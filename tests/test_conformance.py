"""Conformance of every committed submission, and proof that the checks catch broken submissions and
tampered results. The committed result files and the rendered leaderboard are checked in
tests/test_regenerate.py."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from benchmark.config import DTYPE_BYTES, KV_SHAPES
from benchmark.protocol.runner import result_header
from benchmark.protocol.spec import load_spec
from benchmark.trust.conformance import check_result_file, check_submission, check_submission_isolated, kept_per_head

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = sorted(p for p in (ROOT / "submissions").glob("*") if p.is_dir() and not p.name.startswith((".", "_")))


@pytest.fixture()
def as_sandbox(monkeypatch):
    """This test is the sandboxed process check_submission runs in (benchmark.trust.worker): the only one
    where submission code may be imported."""
    from benchmark.paths import SUBMISSION_PROCESS_ENV

    monkeypatch.setenv(SUBMISSION_PROCESS_ENV, "1")


# ------------------------------------------------------------------ what is committed


@pytest.mark.parametrize("submission", SUBMISSIONS, ids=[p.name for p in SUBMISSIONS])
def test_committed_submission_conforms(submission, committed_submission_problems):
    """(``committed_submission_problems``, tests/conftest.py: all of them in one sandboxed check)"""
    assert committed_submission_problems[str(submission)] == []


# ------------------------------------------------------------------ broken submissions are caught


def write_submission(root: Path, name: str, yaml_text: str, files: dict[str, str] | None = None) -> Path:
    folder = root / "submissions" / name
    folder.mkdir(parents=True)
    (folder / "submission.yaml").write_text(textwrap.dedent(yaml_text).lstrip())
    for fname, src in (files or {}).items():
        (folder / fname).write_text(textwrap.dedent(src).lstrip())
    return folder


def yaml_for(name: str, compressor: str = "{press: KnormPress}", adapter: str = "{recipe: none}",
             extra: str = "") -> str:
    return (f"name: {name}\nauthors: [Test Author]\ndescription: conformance test\n"
            f"compressor: {compressor}\nadapter: {adapter}\n{extra}")


GOOD_PRESS = """
    from dataclasses import dataclass

    from kvpress import ScorerPress


    @dataclass
    class NormPress(ScorerPress):
        '''Keeps the entries with the largest value norm.'''

        def score(self, module, hidden_states, keys, values, attentions, kwargs):
            return values.norm(dim=-1)
    """

PREFIX_EVICTING_PRESS = """
    from dataclasses import dataclass

    from kvpress import ScorerPress


    @dataclass
    class NormPress(ScorerPress):
        '''Prunes the cache itself, dropping the first (prefix) entry of every layer.'''

        def score(self, module, hidden_states, keys, values, attentions, kwargs):
            layer = kwargs["past_key_values"].layers[module.layer_idx]
            layer.keys, layer.values = layer.keys[:, :, 1:], layer.values[:, :, 1:]
            return values.norm(dim=-1)
    """

WRONG_SHAPE_PRESS = """
    from dataclasses import dataclass

    from kvpress import ScorerPress


    @dataclass
    class PerQueryHeadPress(ScorerPress):
        '''Returns one score per *query* head (GQA: 4 query heads, 2 KV heads) instead of per KV head.'''

        def score(self, module, hidden_states, keys, values, attentions, kwargs):
            groups = module.config.num_attention_heads // module.config.num_key_value_heads
            return keys.norm(dim=-1).repeat_interleave(groups, dim=1)
    """

GOOD_HOOK = """
    def make_pairs(view):
        first = view.text.split(".")[0]
        return [{"question": "What does the document start with?", "answer": first}] + [
            {"question": q, "answer": a} for q, a in view.train_qa]
    """

BAD_HOOK = """
    def make_pairs(view):
        return [("What does the document start with?", view.text[:20])]  # tuples, not dicts
    """

LORA = "{recipe: qa, lora: {r: 4, alpha: 8}, train: {epochs: 1}}"


def test_good_submissions_pass(tmp_path, as_sandbox):
    kvpress_named = write_submission(tmp_path, "snapkv-qa", yaml_for(
        "snapkv-qa", "{press: SnapKVPress, kwargs: {window_size: 16}}", LORA))
    custom = write_submission(tmp_path, "custom", yaml_for(
        "custom", "{press: 'press:NormPress'}",
        "{recipe: qa, lora: {r: 4, alpha: 8}, train: {hook: 'hooks:make_pairs'}}"),
        {"press.py": GOOD_PRESS, "hooks.py": GOOD_HOOK})
    assert check_submission(kvpress_named) == []
    assert check_submission(custom) == []


@pytest.mark.parametrize("compressor, adapter, extra, field, words", [
    ("{press: KnormPress}", "{recipe: qa, lora: {rank: 16}}", "", "adapter/lora", "rank"),
    ("{press: KnormPress, window: 3}", "{recipe: none}", "", "compressor", "window"),
    ("{press: KnormPress}", "{recipe: finetune}", "", "adapter/recipe", "finetune"),
    ("{press: KnormPress}", "{recipe: none}", "headline_condition: adapter_all\n", "headline_condition", "adapter"),
    ("{press: NoSuchPress}", "{recipe: none}", "", "compressor/press", "NoSuchPress"),
    ("{press: SnapKVPress, kwargs: {windw_size: 3}}", "{recipe: none}", "", "compressor/kwargs", "windw_size"),
    ("{press: KnormPress}", "{recipe: qa, lora: {target_modules: [mlp_in]}}", "", "adapter/lora/target_modules",
     "mlp_in"),
    ("{press: KnormPress}", "{recipe: qa, lora: {init: pissa}}", "", "adapter/lora", "pissa"),
], ids=["unknown-lora-field", "unknown-compressor-field", "unknown-recipe", "headline-needs-adapter",
        "unknown-press", "bad-press-kwargs", "bad-target-modules", "base-modifying-init"])
def test_bad_yaml_field_is_named(tmp_path, compressor, adapter, extra, field, words):
    folder = write_submission(tmp_path, "broken", yaml_for("broken", compressor, adapter, extra))
    problems = check_submission(folder)
    assert problems, "a broken submission passed"
    text = "\n".join(problems)
    assert str(folder / "submission.yaml") in text
    assert f"'{field}" in text and words in text, text


def test_name_must_match_folder(tmp_path):
    folder = write_submission(tmp_path, "right", yaml_for("wrong"))
    (problem,) = check_submission(folder)
    assert "field 'name'" in problem and "submission.yaml" in problem


def test_press_that_evicts_prefix_entries_fails(tmp_path, as_sandbox):
    folder = write_submission(tmp_path, "evicts-prefix", yaml_for("evicts-prefix", "{press: 'press:NormPress'}"),
                              {"press.py": PREFIX_EVICTING_PRESS})
    problems = check_submission(folder)
    assert problems and all("field 'compressor/press'" in p for p in problems)
    assert any("changed the KV cache" in p for p in problems), problems


def test_press_same_module_name_as_another_submission_is_not_reused(tmp_path, as_sandbox):
    """Two submissions each with a press.py: the second is checked with its own code."""
    good = write_submission(tmp_path, "good", yaml_for("good", "{press: 'press:NormPress'}"), {"press.py": GOOD_PRESS})
    bad = write_submission(tmp_path, "bad", yaml_for("bad", "{press: 'press:NormPress'}"),
                           {"press.py": PREFIX_EVICTING_PRESS})
    assert check_submission(good) == []
    assert check_submission(bad) != []
    assert check_submission(good) == []


def test_submissions_with_one_named_press_setting_share_its_check_and_keep_their_own_problems(tmp_path, as_sandbox):
    """check_submissions (validate's sandboxed child) runs a named press's checks once per setting:
    each submission gets the problems of that check, naming its own file; presses of submission code
    are each checked with their own code."""
    from benchmark.trust.conformance import check_submissions

    first, second = (write_submission(tmp_path, n, yaml_for(n, "{press: RandomPress}")) for n in ("first", "second"))
    good = write_submission(tmp_path, "good", yaml_for("good", "{press: 'press:NormPress'}"), {"press.py": GOOD_PRESS})
    bad = write_submission(tmp_path, "bad", yaml_for("bad", "{press: 'press:NormPress'}"),
                           {"press.py": PREFIX_EVICTING_PRESS})
    knorm = write_submission(tmp_path, "knorm", yaml_for("knorm"))
    nested = "{press: CriticalKVPress, kwargs: {press: {press: 'press:NormPress'}}}"  # a named press around code
    nested_good = write_submission(tmp_path, "nested-good", yaml_for("nested-good", nested), {"press.py": GOOD_PRESS})
    nested_bad = write_submission(tmp_path, "nested-bad", yaml_for("nested-bad", nested),
                                  {"press.py": PREFIX_EVICTING_PRESS})
    shared = check_submissions([first, second, good, bad, knorm, nested_good, nested_bad])
    assert shared[2:] == [check_submission(p) for p in (good, bad, knorm, nested_good, nested_bad)]
    assert shared[2] == [] and shared[3] != [] and shared[4] == [] and shared[5] == [] and shared[6] != []
    one, two = shared[:2]  # an unseeded RandomPress: which rho differs first is chance, so compared with itself
    assert one and all(p.startswith(f"{first / 'submission.yaml'}: ") and "not deterministic" in p for p in one), one
    assert two == [p.replace(str(first), str(second)) for p in one]


def test_press_with_wrong_score_shape_fails(tmp_path, as_sandbox):
    folder = write_submission(tmp_path, "wrong-shape", yaml_for("wrong-shape", "{press: 'press_q:PerQueryHeadPress'}"),
                              {"press_q.py": WRONG_SHAPE_PRESS})
    problems = check_submission(folder)
    assert problems and any("shape" in p and "(batch, kv_heads, n_doc)" in p for p in problems), problems
    assert all("field 'compressor/press'" in p for p in problems)


def test_missing_press_module_fails(tmp_path):
    folder = write_submission(tmp_path, "no-module", yaml_for("no-module", "{press: 'nowhere:NormPress'}"))
    (problem,) = check_submission(folder)
    assert "field 'compressor/press'" in problem and "nowhere" in problem


def test_nondeterministic_press_fails(tmp_path):
    folder = write_submission(tmp_path, "random", yaml_for("random", "{press: RandomPress}"))
    problems = check_submission(folder)
    assert any("not deterministic" in p for p in problems), problems
    seeded = write_submission(tmp_path, "random-seeded",
                              yaml_for("random-seeded", "{press: RandomPress, kwargs: {seed: 0}}"))
    assert check_submission(seeded) == []


def test_missing_hook_fails(tmp_path):
    folder = write_submission(tmp_path, "no-hook", yaml_for(
        "no-hook", adapter="{recipe: qa, train: {hook: 'synth:make_pairs'}}"))
    (problem,) = check_submission(folder)
    assert "field 'adapter/train/hook'" in problem and "synth.py" in problem


def test_hook_returning_wrong_type_fails(tmp_path, as_sandbox):
    folder = write_submission(tmp_path, "bad-hook", yaml_for(
        "bad-hook", adapter="{recipe: ctx_qa, train: {hook: 'bad_hooks:make_pairs'}}"), {"bad_hooks.py": BAD_HOOK})
    (problem,) = check_submission(folder)
    assert "field 'adapter/train/hook'" in problem and "dict" in problem


def test_hook_with_ntp_recipe_fails(tmp_path):
    folder = write_submission(tmp_path, "ntp-hook", yaml_for(
        "ntp-hook", adapter="{recipe: ntp, train: {hook: 'hooks:make_pairs'}}"), {"hooks.py": GOOD_HOOK})
    (problem,) = check_submission(folder)
    assert "field 'adapter/train/hook'" in problem and "ntp" in problem


def test_not_yaml(tmp_path):
    folder = tmp_path / "submissions" / "garbled"
    folder.mkdir(parents=True)
    (folder / "submission.yaml").write_text("name: [unclosed\n")
    (problem,) = check_submission(folder)
    assert "submission.yaml" in problem and "YAML" in problem


# ------------------------------------------------------------------ result files: valid, then tampered


MINI_MODEL = load_spec("mini").model()  # the model of the made-up result: the mini spec's default
_LAYERS, _KV_HEADS, _HEAD_DIM = KV_SHAPES[MINI_MODEL.id]
LAYER_HEADS = _LAYERS * _KV_HEADS
ENTRY_BYTES = 2 * _HEAD_DIM * DTYPE_BYTES["float32"]  # a key and a value per entry, as compression.kv_bytes counts
ENVIRONMENT = {"lorakv_bench": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.2.0",
               "peft": "0.21.2", "kvpress": "0.5.5", "device": "cpu", "torch_threads": 2, "dtype": "float32",
               "sandbox": "bubblewrap"}


def write_valid_result(tmp_path: Path, dataset: str = "mini-narrative", spec_name: str = "mini") -> tuple[Path, Path]:
    """A result file that passes every check: real mini-tier questions, made-up generations,
    metrics and cells computed the way the runner does, under the spec ``load_spec(spec_name)``
    loads (the mini tier's current one by default). Returns (path, submissions dir)."""
    from benchmark.protocol.datasets import load_split
    from benchmark.protocol.results import ResultFile, result_path
    from benchmark.protocol.submission import load_submission

    folder = write_submission(tmp_path, "knorm", yaml_for("knorm"))
    sub = load_submission(folder)
    spec = load_spec(spec_name)
    scoring = spec.scoring()
    model = spec.model()
    ds = spec.dataset(dataset)
    prefix = spec.prompt_for(model).answer_prefix
    header = result_header(sub, spec, model, ds, "test", sorted(spec.rhos), list(spec.conditions), dict(ENVIRONMENT))
    path = result_path(tmp_path / "leaderboard" / "results", sub.name, spec.tier, model.id, ds.id)
    rf = ResultFile(path, header)
    docs, preds = [], []
    for d_i, doc in enumerate(load_split(ds.test)):
        docs.append({"doc_id": doc.doc_id, "n_prefix_tokens": 12, "n_doc_tokens": 300, "adapter": None, "timings": {}})
        for q_i, q in enumerate(doc.questions):
            for rho in sorted(spec.rhos):
                right = (q_i + d_i) % 3 != 0 and rho < 0.9
                generation = f" {q.answers[0]}\nQuestion: more" if right else " I am not sure\n"
                prediction = scoring.extract(generation, prefix)
                s = scoring.score(prediction, q.answers)
                kept = LAYER_HEADS * kept_per_head(12, 300, rho, scoring)  # what evict keeps: prefix + kvpress's budget
                preds.append({"doc_id": doc.doc_id, "question_id": q.id, "question": q.question, "rho": rho,
                              "condition": "base",
                              "generation": generation, "prediction": prediction, "answers": list(q.answers),
                              "rouge_l": s["rouge_l"], "exact_match": s["exact_match"],
                              "kv_entries": kept, "kv_bytes": ENTRY_BYTES * kept}
                             | ({"tags": list(q.tags)} if q.tags else {}))
    rf.data["documents"], rf.data["predictions"] = docs, preds
    rf.save()
    return path, tmp_path / "submissions"


@pytest.fixture()
def valid_result(tmp_path):
    return write_valid_result(tmp_path)


def test_valid_result_passes(valid_result):
    path, subs = valid_result
    assert check_result_file(path, submissions_dir=subs) == []
    assert check_result_file(path) == []  # finds tmp_path/submissions by itself


def _tamper(path: Path, fn) -> Path:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=1))
    return path


def test_tampered_rouge_is_reported(valid_result, tmp_path):
    path, subs = valid_result
    copy = tmp_path / "copy" / path.relative_to(tmp_path)
    copy.parent.mkdir(parents=True)
    shutil.copy(path, copy)

    def bump(data):
        p = data["predictions"][3]
        p["rouge_l"] = 100.0 if p["rouge_l"] < 50 else 0.0

    problems = check_result_file(_tamper(copy, bump), submissions_dir=subs)
    assert any("field 'predictions/3/rouge_l'" in p and str(copy) in p for p in problems), problems
    assert check_result_file(path, submissions_dir=subs) == []  # the original is untouched


def _set(path_in_data, value):
    def fn(data):
        obj = data
        for key in path_in_data[:-1]:
            obj = obj[key]
        obj[path_in_data[-1]] = value
    return fn


@pytest.mark.parametrize("mutate, field", [
    (_set(["predictions", 0, "prediction"], "something else"), "predictions/0/prediction"),
    (_set(["predictions", 1, "exact_match"], 50.0), "predictions/1/exact_match"),
    (_set(["cells", 0, "rouge_l"], 99.0), "cells/0/rouge_l"),
    (_set(["cells", 2, "kv_bytes"], 1.0), "cells/2/kv_bytes"),
    (_set(["spec_hash"], "0123456789abcdef"), "spec_hash"),
    (_set(["submission", "hash"], "0123456789abcdef"), "submission/hash"),
    (_set(["submission", "name"], "someone-else"), "submission/name"),
    (_set(["rhos"], [0.0, 0.5, 0.75, 0.9, 0.95, 1.0, 0.99]), "rhos"),
    (_set(["format"], "lorakv-bench-result/0"), "format"),
    (lambda d: d.update(predictions=[p for p in d["predictions"] if p["rho"] != sorted(d["rhos"])[1]]),
     "predictions"),
    (lambda d: d.update(predictions=[p for p in d["predictions"] if p["doc_id"] != d["documents"][0]["doc_id"]],
                        documents=d["documents"][1:]), "documents"),
], ids=["prediction-not-extracted", "exact-match", "cell-rouge", "cell-kv-bytes", "unknown-spec", "submission-hash",
        "wrong-place", "rho-grid", "schema", "missing-rho", "partial-split"])
def test_tampered_result_is_reported(valid_result, mutate, field):
    path, subs = valid_result
    problems = check_result_file(_tamper(path, mutate), submissions_dir=subs)
    assert any(f"'{field}" in p for p in problems), problems


def test_changed_submission_is_reported(valid_result):
    path, subs = valid_result
    yml = subs / "knorm" / "submission.yaml"
    yml.write_text(yml.read_text().replace("conformance test", "changed after evaluating"))
    problems = check_result_file(path, submissions_dir=subs)
    assert any("field 'submission/hash'" in p for p in problems), problems


# ------------------------------------------------------------------ attacks on a result file


def _gold(p):
    return p["answers"][0]


def test_predictions_set_to_gold_without_their_generations_are_reported(valid_result):
    """Setting every prediction (and its scores and cells) to the gold answer, generations left alone:
    the extraction check catches it. Gold generations too are caught by re-running (verify)."""
    from benchmark.protocol.results import aggregate

    path, subs = valid_result

    def to_gold(data):
        for p in data["predictions"]:
            p["prediction"] = _gold(p)
            p |= load_spec("mini").scoring().score(p["prediction"], p["answers"])
        data["cells"] = aggregate(data["predictions"], data["documents"])

    problems = check_result_file(_tamper(path, to_gold), submissions_dir=subs)
    assert any("field 'predictions/" in p and "/prediction'" in p and "extracts to" in p for p in problems), problems


def test_changed_gold_answers_are_reported(valid_result):
    """An answer changed inside the file to match a wrong prediction, scores and cells recomputed from
    the file's own answers: the pinned dataset still has the real answer."""
    from benchmark.protocol.results import aggregate

    path, subs = valid_result

    def rewrite_answers(data):
        for p in data["predictions"]:
            p["answers"] = [p["prediction"] or "x"]
            p |= load_spec("mini").scoring().score(p["prediction"], p["answers"])
        data["cells"] = aggregate(data["predictions"], data["documents"])

    problems = check_result_file(_tamper(path, rewrite_answers), submissions_dir=subs)
    assert any("field 'predictions/0/answers'" in p and "pinned dataset" in p for p in problems), problems
    # and the scores are re-scored against the pinned answers, not the file's
    assert any("/rouge_l'" in p and "gold answers" in p for p in problems), problems


@pytest.mark.parametrize("mutate, field, words", [
    (_set(["predictions", 0, "question_id"], "no-such-question"), "predictions/0/question_id", "pinned dataset"),
    (_set(["predictions", 0, "question"], "An easier question?"), "predictions/0/question", "pinned dataset asks"),
    (lambda d: d["predictions"][0].update(tags=["uncovered" if d["predictions"][0]["tags"] == ["covered"]
                                                else "covered"]), "predictions/0/tags", "pinned dataset"),
    (_set(["dataset", "sha256"], "0" * 64), "dataset/sha256", "spec pins"),
], ids=["unknown-question-id", "changed-question-text", "changed-tags", "other-dataset-hash"])
def test_predictions_checked_against_pinned_dataset(valid_result, mutate, field, words):
    path, subs = valid_result
    problems = check_result_file(_tamper(path, mutate), submissions_dir=subs)
    assert any(f"field '{field}'" in p and words in p for p in problems), problems


def test_budget_exceeded_is_reported(valid_result):
    """A compressor that kept more document entries at rho = 0.9 than evict's budget allows (and a
    file whose kv_bytes and cells were made consistent with that) is reported."""
    from benchmark.protocol.results import aggregate

    path, subs = valid_result

    def keep_more(data):
        for p in data["predictions"]:
            if p["rho"] == 0.9:
                p["kv_entries"] += LAYER_HEADS * 10
                p["kv_bytes"] = ENTRY_BYTES * p["kv_entries"]
        data["cells"] = aggregate(data["predictions"], data["documents"])

    problems = check_result_file(_tamper(path, keep_more), submissions_dir=subs)
    assert any("/kv_entries'" in p and "rho=0.9" in p and "budget" in p for p in problems), problems


def test_kv_bytes_inconsistent_with_entries_is_reported(valid_result):
    from benchmark.protocol.results import aggregate

    path, subs = valid_result

    def shrink(data):
        data["predictions"][0]["kv_bytes"] //= 2
        data["cells"] = aggregate(data["predictions"], data["documents"])

    problems = check_result_file(_tamper(path, shrink), submissions_dir=subs)
    assert any("field 'predictions/0/kv_bytes'" in p for p in problems), problems


# ------------------------------------------------------------------ submission code comes from its folder only


def test_submission_hash_covers_files_in_subfolders(tmp_path):
    from benchmark.protocol.submission import load_submission

    folder = write_submission(tmp_path, "nested", yaml_for("nested", "{press: 'press:NormPress'}"),
                              {"press.py": GOOD_PRESS})
    (folder / "helpers").mkdir()
    (folder / "helpers" / "weights.txt").write_text("0.5\n")
    before = load_submission(folder).hash()
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "press.cpython-311.pyc").write_bytes(b"\x00compiled")
    assert load_submission(folder).hash() == before, "__pycache__ must not change the hash"
    (folder / "helpers" / "weights.txt").write_text("0.7\n")
    assert load_submission(folder).hash() != before
    (folder / "helpers" / "blob.bin").write_bytes(b"\xff\xfe not utf-8")
    assert load_submission(folder).hash() != before


def test_hash_of_a_yaml_only_submission_is_unchanged():
    """Committed results keep their hash: a folder with only submission.yaml hashes as before."""
    from benchmark.paths import stable_hash
    from benchmark.protocol.submission import load_submission

    sub = load_submission(ROOT / "submissions" / "knorm")
    assert sub.hash() == stable_hash({"submission": sub.raw, "code": {}})


@pytest.mark.parametrize("press", ["'os:system'", "'subprocess:run'", "'outside_module:Press'", "'press:X'",
                                   "'benchmark.trust.conformance:check_result_file'", "utils", "pipeline"])
def test_press_outside_the_folder_is_refused_before_import(tmp_path, monkeypatch, press):
    marker = tmp_path / "imported"
    (tmp_path / "outside_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Press: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = write_submission(tmp_path, "evil", yaml_for("evil", "{press: " + press + "}"))
    problems = check_submission(folder)
    assert len(problems) == 1 and "field 'compressor/press'" in problems[0], problems
    assert "\n" not in problems[0]
    assert not marker.exists(), "a module outside the submission folder was imported"


def test_hook_outside_the_folder_is_refused(tmp_path):
    folder = write_submission(tmp_path, "evil-hook",
                              yaml_for("evil-hook", adapter="{recipe: qa, train: {hook: 'os:system'}}"))
    (problem,) = check_submission(folder)
    assert "field 'adapter/train/hook'" in problem and "submission folder" in problem


def test_submission_modules_do_not_stay_in_sys_modules(tmp_path, as_sandbox):
    import sys

    folder = write_submission(tmp_path, "custom", yaml_for(
        "custom", "{press: 'press:NormPress'}",
        "{recipe: qa, lora: {r: 4, alpha: 8}, train: {hook: 'hooks:make_pairs'}}"),
        {"press.py": GOOD_PRESS, "hooks.py": GOOD_HOOK})
    assert check_submission(folder) == []
    left = [name for name, mod in sys.modules.items()
            if str(folder.resolve()) in str(getattr(mod, "__file__", "") or "")]
    assert left == []
    assert "press" not in sys.modules and "hooks" not in sys.modules


PATCHING_HOOK = """
    import sys

    # import-time code of a malicious submission: make every check pass
    for name in ("benchmark.trust.conformance",):
        mod = sys.modules.get(name) or __import__(name, fromlist=["x"])
        mod.check_result_file = lambda *a, **k: []
        mod.check_submission = lambda *a, **k: []


    def make_pairs(view):
        return [{"question": q, "answer": a} for q, a in view.train_qa]
    """


def test_import_time_code_of_a_submission_cannot_patch_the_result_checks(valid_result, tmp_path, capsys):
    """``validate`` imports the patcher's code (a QA hook's module) in the sandbox (one
    check_submission_isolated), then checks the tampered result in its own process: the patch never
    reaches that check. (A press's module is imported the same way, in the same child; a hook is
    used because a press of its own would start two more sandboxed children for its plans.)"""
    from benchmark.cli import main

    path, subs = valid_result
    evil = write_submission(tmp_path / "elsewhere", "patcher",
                            yaml_for("patcher", adapter="{recipe: qa, train: {hook: 'patch:make_pairs'}}"),
                            {"patch.py": PATCHING_HOOK})
    _tamper(path, _set(["predictions", 0, "rouge_l"], 100.0))
    assert main(["validate", str(evil), str(path)]) == 1
    out, err = capsys.readouterr()
    assert f"ok   {evil}" in out.splitlines()  # it passes its own check (it is a valid submission)...
    assert any(line.startswith(f"FAIL {path} (") for line in out.splitlines())  # ...but the result check is intact
    assert any("field 'predictions/0/rouge_l'" in line for line in err.splitlines()), err
    problems = check_result_file(path, submissions_dir=subs)
    assert any("field 'predictions/0/rouge_l'" in p for p in problems), problems


EXITING_PRESS = """
    import sys

    sys.exit(0)
    """


def test_submission_that_exits_while_importing_fails(tmp_path, as_sandbox):
    folder = write_submission(tmp_path, "exits", yaml_for("exits", "{press: 'press:NormPress'}"),
                              {"press.py": EXITING_PRESS})
    (problem,) = check_submission(folder)
    assert "field 'compressor/press'" in problem and "sys.exit" in problem
    (problem,) = check_submission_isolated(folder)
    assert "sys.exit" in problem


def test_submission_that_kills_its_process_fails(tmp_path):
    folder = write_submission(tmp_path, "killer", yaml_for("killer", "{press: 'press:NormPress'}"),
                              {"press.py": "import os\nos._exit(0)\n"})
    (problem,) = check_submission_isolated(folder)
    assert "ended without a result" in problem


def test_compression_ratio_in_press_kwargs_is_refused(tmp_path):
    folder = write_submission(tmp_path, "ratio",
                              yaml_for("ratio", "{press: KnormPress, kwargs: {compression_ratio: 0.5}}"))
    (problem,) = check_submission(folder)
    assert "field 'compressor/kwargs'" in problem and "compression_ratio" in problem


# ------------------------------------------------------------------ runs/ by default, publish into the leaderboard


def test_runs_go_to_runs_by_default():
    from benchmark.cli import build_parser
    from benchmark.config import EvalRequest

    assert build_parser().parse_args(["evaluate", "submissions/snapkv"]).out == "runs"
    assert EvalRequest("submissions/snapkv").out == "runs"  # what runner.evaluate and executors.run_on_ray take
    assert "/runs/" in (ROOT / ".gitignore").read_text().splitlines()


def _as_run(path: Path, tmp_path: Path) -> Path:
    run = tmp_path / "runs" / path.relative_to(tmp_path / "leaderboard" / "results")
    run.parent.mkdir(parents=True)
    shutil.move(path, run)
    return run


def test_publish_copies_a_valid_run(valid_result, tmp_path, capsys):
    from benchmark.cli import main

    path, subs = valid_result
    run = _as_run(path, tmp_path)
    results = tmp_path / "published"
    assert main(["publish", str(run), "--results", str(results), "--submissions", str(subs)]) == 0
    dest = results / run.relative_to(tmp_path / "runs")
    assert dest.read_text() == run.read_text()
    assert check_result_file(dest, submissions_dir=subs) == []


@pytest.mark.parametrize("mutate, field", [
    (_set(["predictions", 0, "rouge_l"], 100.0), "predictions/0/rouge_l"),
    (_set(["slice"], {"docs": None, "questions": 2}), "slice"),
], ids=["tampered", "partial-slice"])
def test_publish_refuses_a_bad_run(valid_result, tmp_path, capsys, mutate, field):
    from benchmark.cli import main

    path, subs = valid_result
    run = _as_run(_tamper(path, mutate), tmp_path)
    results = tmp_path / "published"
    assert main(["publish", str(run), "--results", str(results), "--submissions", str(subs)]) == 1
    assert f"field '{field}" in capsys.readouterr().err
    assert not results.exists() or not any(results.rglob("*.json"))


def test_listed_checks_are_the_checks_that_run():
    """``validate -v`` lists conformance.SUBMISSION_CHECKS / RESULT_CHECKS: each the name of a
    function the entry point calls, in the order it calls them, none left out."""
    import ast
    import inspect

    import benchmark.trust.conformance as C

    def calls(*functions) -> list[str]:
        names = []
        for f in functions:
            found = [n for n in ast.walk(ast.parse(inspect.getsource(f)))
                     if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
            for node in sorted(found, key=lambda n: (n.lineno, n.col_offset)):  # source order
                if node.func.id not in names:
                    names.append(node.func.id)
        return [n for n in names if n.startswith(("check_", "_check_", "load_", "problems_", "_pinned", "_named"))]

    def listed(labels) -> list[str]:
        return [label.split(" ")[0] for label in labels]

    submission = calls(C.check_submission, C._check_press_on_tiny) + ["check_sandboxed_plans"]
    assert listed(C.SUBMISSION_CHECKS) == [c for c in submission if c != "_check_press_on_tiny"]
    assert listed(C.RESULT_CHECKS) == calls(C.check_result_file)
