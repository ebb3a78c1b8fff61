"""QA synthesis: parser on realistic outputs, chunking/prompting, retries and cache."""

from __future__ import annotations

import json

import pytest

from benchmark.protocol import synthesis
from benchmark.protocol.synthesis import (
    SynthesisSettings,
    build_prompt,
    cached_synthesize,
    chunk_document,
    parse_qa_pairs,
    synthesis_cache_path,
    synthesize_qa,
)

# ------------------------------------------------------------------- parser

CLEAN = ('[{"question": "Who kept the lamp?", "answer": "Mara"}, '
         '{"question": "How many steps?", "answer": "one hundred and twelve"}]')
EXPECTED = [
    {"question": "Who kept the lamp?", "answer": "Mara"},
    {"question": "How many steps?", "answer": "one hundred and twelve"},
]

REALISTIC = {
    "clean array": CLEAN,
    "json code fence with prose around": ("Sure! Here are the pairs:\n```json\n" + CLEAN
                                          + "\n```\nLet me know if you need more."),
    "bare code fence": "```\n" + CLEAN + "\n```",
    "leading prose": "Based on the passage, here are 2 question-answer pairs:\n\n" + CLEAN,
    "trailing commas": ('[\n  {"question": "Who kept the lamp?", "answer": "Mara",},\n'
                        '  {"question": "How many steps?", "answer": "one hundred and twelve"},\n]'),
    "single quotes": ("[{'question': 'Who kept the lamp?', 'answer': 'Mara'}, "
                      "{'question': 'How many steps?', 'answer': 'one hundred and twelve'}]"),
    "think block": "<think>\nThe passage mentions Mara [and] {steps}.\n</think>\n\n" + CLEAN,
    "wrapper object": '{"qa_pairs": ' + CLEAN + "}",
    "extra keys": ('[{"question": "Who kept the lamp?", "answer": "Mara", "evidence": {"line": 1}, '
                   '"difficulty": "easy"},'
                   ' {"Question": "How many steps?", "Answer": "one hundred and twelve", "type": "number"}]'),
    "duplicates": CLEAN[:-1] + ', {"question": "who kept  the lamp?", "answer": "MARA"}]',
}


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_parser_realistic_outputs(name):
    assert parse_qa_pairs(REALISTIC[name]) == EXPECTED


def test_parser_truncated_array_keeps_complete_objects():
    truncated = ('```json\n[\n  {"question": "Who kept the lamp?", "answer": "Mara"},\n'
                 '  {"question": "How many steps?", "answer": "one hundred and twelve"},\n'
                 '  {"question": "What was the boat called?", "ans')
    assert parse_qa_pairs(truncated) == EXPECTED


def test_parser_truncated_wrapper_object():
    text = '{"pairs": [{"question": "Who kept the lamp?", "answer": "Mara"}, {"question": "How many'
    assert parse_qa_pairs(text) == EXPECTED[:1]


def test_parser_single_object_instead_of_array():
    assert parse_qa_pairs('Answer:\n{"question": "Who kept the lamp?", "answer": "Mara"}') == EXPECTED[:1]


def test_parser_drops_missing_and_empty_fields():
    text = json.dumps(
        [
            {"question": "Who kept the lamp?", "answer": "Mara"},
            {"question": "No answer here?"},
            {"answer": "orphan answer"},
            {"question": "Empty?", "answer": "   "},
            {"question": "", "answer": "x"},
            {"question": "List answer?", "answer": ["a", "b"]},
            {"question": "What year?", "answer": 1887},
            "not an object",
        ]
    )
    assert parse_qa_pairs(text) == [
        {"question": "Who kept the lamp?", "answer": "Mara"},
        {"question": "What year?", "answer": "1887"},
    ]


def test_parser_apostrophes_and_brackets_inside_strings():
    text = 'Here [draft]: [{"question": "What is Tomas\'s boat {name}?", "answer": "the Gull [a boat]"}]'
    assert parse_qa_pairs(text) == [{"question": "What is Tomas's boat {name}?", "answer": "the Gull [a boat]"}]


def test_parser_objects_separated_by_prose():
    text = ('Q1: {"question": "Who kept the lamp?", "answer": "Mara"}\n'
            'Q2: {"question": "How many steps?", "answer": "one hundred and twelve"}')
    assert parse_qa_pairs(text) == EXPECTED


@pytest.mark.parametrize(
    "text",
    ["", "   ", "I'm sorry, I cannot generate questions for this passage.", "[1, 2, 3]", '{"note": "no pairs"}',
     "[{]}", "<think>still thinking about [the passage", None],
)
def test_parser_hopeless_text_gives_empty_list(text):
    assert parse_qa_pairs(text) == []


# ------------------------------------------------------- tiny tokenizer/model


WORDS = (
    "mara kept the lamp on northern cliff for forty years every night she climbed one hundred and "
    "twelve steps to light it her brother tomas sailed a fishing boat called gull . , ? [ ] { } : "
    "question answer who what how many"
).split()


def make_tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def make_model(vocab_size: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config).eval()


DOC = (
    "Mara kept the lamp on the northern cliff for forty years. Every night she climbed one hundred "
    "and twelve steps to light it. Her brother Tomas sailed a fishing boat called the Gull."
)


def count_generate(model):
    calls = {"n": 0}
    original = model.generate

    def counting(*args, **kwargs):
        calls["n"] += 1
        assert kwargs["do_sample"] is True and kwargs["temperature"] == 0.4 and kwargs["top_p"] == 0.9
        return original(*args, **kwargs)

    model.generate = counting
    return calls


# ------------------------------------------------------------ chunk & prompt


def test_chunk_document_token_chunks_cover_text():
    tok = make_tokenizer()
    n_tokens = len(tok(DOC, add_special_tokens=False)["input_ids"])
    chunks = chunk_document(DOC, tok, chunk_tokens=8)
    assert len(chunks) == -(-n_tokens // 8)
    assert all(len(tok(c, add_special_tokens=False)["input_ids"]) <= 8 for c in chunks)
    assert "".join(chunks).replace(" ", "") == DOC.replace(" ", "")  # nothing lost or duplicated
    assert chunk_document("   ", tok) == []


def test_prompt_has_neighbours_as_background_and_asks_for_json():
    tok = make_tokenizer()
    chunks = [f"chunk{i}" for i in range(7)]
    prompt, templated = build_prompt(tok, chunks, 3, pairs_per_chunk=4, neighbours=2)
    assert not templated
    background, target = prompt.split("[Target passage]")
    assert [c for c in chunks if c in background] == ["chunk1", "chunk2", "chunk4", "chunk5"]
    assert target.strip().startswith("chunk3")
    assert "4 question-answer pairs" in prompt and "JSON array" in prompt and '"answer"' in prompt
    first, _ = build_prompt(tok, chunks, 0, neighbours=2)
    assert "chunk1" in first and "chunk2" in first and "chunk3" not in first.split("[Target passage]")[0]
    alone, _ = build_prompt(tok, ["only"], 0, neighbours=2)
    assert "[Background]" not in alone


def test_prompt_uses_chat_template_when_present():
    template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")
    tok = make_tokenizer(chat_template=template)
    prompt, templated = build_prompt(tok, ["a", "b"], 0)
    assert templated and prompt.startswith("<s>user: ") and prompt.endswith("assistant:")


# ------------------------------------------------------ retries (scripted)


def test_retries_until_parseable_and_caps_pairs(monkeypatch):
    tok = make_tokenizer()
    five = json.dumps([{"question": f"Q{i}?", "answer": f"A{i}"} for i in range(5)])
    script = iter(["garbage", "[{", five, five])
    seen = []

    def fake_generate(model, tokenizer, prompts, templated, settings, seeds):
        seen.extend(seeds)
        return [next(script) for _ in prompts]

    monkeypatch.setattr(synthesis, "_generate_texts", fake_generate)
    text = " ".join(["mara kept the lamp"] * 4)  # 16 tokens -> 2 chunks of 8
    pairs = synthesize_qa(None, tok, text, chunk_tokens=8, pairs_per_chunk=4, progress=False)
    assert len(seen) == 4  # chunk 0: 3 attempts, chunk 1: 1 attempt
    assert pairs == [{"question": f"Q{i}?", "answer": f"A{i}"} for i in range(4)] * 2


def test_hopeless_chunk_gives_up_after_retries(monkeypatch):
    tok = make_tokenizer()
    calls = []
    monkeypatch.setattr(synthesis, "_generate_texts",
                        lambda m, t, prompts, *a: calls.append(1) or ["no json"] * len(prompts))
    assert synthesize_qa(None, tok, "mara kept the lamp", retries=2, progress=False) == []
    assert len(calls) == 2


def test_settings_validation():
    with pytest.raises(ValueError, match="retries"):
        SynthesisSettings(retries=0)
    with pytest.raises(ValueError, match="neighbours"):
        SynthesisSettings(neighbours=-1)


# ------------------------------------------------ end to end, tiny Llama


def test_end_to_end_tiny_llama_retry_and_cache(tmp_path):
    tok = make_tokenizer()
    model = make_model(len(tok))
    calls = count_generate(model)
    settings = dict(chunk_tokens=16, pairs_per_chunk=4, neighbours=2, retries=3, seed=0, max_new_tokens=6)
    n_chunks = len(chunk_document(DOC, tok, 16))
    assert n_chunks == 3

    pairs = cached_synthesize(model, tok, DOC, cache_dir=tmp_path, generator_id="tiny-llama", progress=False,
                              **settings)
    assert isinstance(pairs, list)
    assert all(set(p) == {"question", "answer"} and p["question"] and p["answer"] for p in pairs)
    # a random model emits junk: every chunk is retried up to 3 attempts
    assert n_chunks <= calls["n"] <= 3 * n_chunks

    path = synthesis_cache_path(tmp_path, "tiny-llama", DOC, SynthesisSettings(**settings))
    assert path.parent == tmp_path / "synth" and path.exists()
    stored = json.loads(path.read_text())
    assert stored["generator_id"] == "tiny-llama" and stored["pairs"] == pairs
    assert stored["settings"]["temperature"] == 0.4 and stored["stats"]["generate_calls"] == calls["n"]

    before = calls["n"]
    again = cached_synthesize(model, tok, DOC, cache_dir=tmp_path, generator_id="tiny-llama", progress=False,
                              **settings)
    assert again == pairs and calls["n"] == before  # served from the cache, no generate call

    # a different generator, document or setting is a different cache entry
    other = synthesis_cache_path(tmp_path, "other-model", DOC, SynthesisSettings(**settings))
    assert other != path
    assert synthesis_cache_path(tmp_path, "tiny-llama", DOC + "!", SynthesisSettings(**settings)) != path
    assert synthesis_cache_path(tmp_path, "tiny-llama", DOC, SynthesisSettings(**{**settings, "seed": 1})) != path


def test_same_seed_same_output(monkeypatch):
    tok = make_tokenizer()
    model = make_model(len(tok))
    outputs = []
    original = synthesis._generate_texts

    def recording(*args):
        out = original(*args)
        outputs.extend(out)
        return out

    monkeypatch.setattr(synthesis, "_generate_texts", recording)
    synthesize_qa(model, tok, DOC, chunk_tokens=16, retries=1, max_new_tokens=5, progress=False)
    first, outputs[:] = list(outputs), []
    synthesize_qa(model, tok, DOC, chunk_tokens=16, retries=1, max_new_tokens=5, progress=False)
    assert outputs == first and len(first) == 3


def test_corrupt_cache_file_is_regenerated(tmp_path, monkeypatch):
    tok = make_tokenizer()
    monkeypatch.setattr(synthesis, "_generate_texts",
                        lambda m, t, prompts, *a: ['[{"question": "Who?", "answer": "Mara"}]'] * len(prompts))
    path = synthesis_cache_path(tmp_path, "g", DOC, SynthesisSettings())
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    pairs = cached_synthesize(None, tok, DOC, cache_dir=tmp_path, generator_id="g", progress=False)
    assert pairs == [{"question": "Who?", "answer": "Mara"}]  # one 64-token chunk
    assert json.loads(path.read_text())["pairs"] == pairs


def test_sampling_ignores_the_models_top_k():
    """The paper samples with vLLM, which has no top-k unless asked; HF's generate would apply the
    model's generation_config top_k. With it set to 1 (greedy), seeds still give different text."""
    import torch

    tok = make_tokenizer()
    model = make_model(len(tok))
    model.generation_config.top_k = 1
    settings = SynthesisSettings(temperature=1.0, top_p=1.0, max_new_tokens=8)
    texts = set()
    for seed in range(4):
        torch.manual_seed(seed)
        texts.add(synthesis._generate_texts(model, tok, ["Question: who"], False, settings, [seed])[0])
    assert len(texts) > 1


# ------------------------------------------------------------ the paper's parser

PAIR_A, PAIR_B = {"question": "Who kept the lamp?", "answer": "Mara"}, {"question": "How many steps?", "answer": "112"}
AB = json.dumps([PAIR_A, PAIR_B])

# (model output, what the paper's parse_output returns): crafted from its rules
PAPER_CASES = {
    "plain array": (AB, [PAIR_A, PAIR_B]),
    "json fence": ("```json\n" + AB + "\n```", [PAIR_A, PAIR_B]),
    "bare fence": ("```\n" + AB + "```", [PAIR_A, PAIR_B]),
    "prose before the array": ("Here are the pairs:\n" + AB, [PAIR_A, PAIR_B]),
    "prose after the array": (AB + "\nI hope this helps.", []),
    "cut after a complete object": (AB[:-1] + ",", [PAIR_A, PAIR_B]),
    "cut inside the last answer": (AB[:-4], [PAIR_A, {"question": "How many steps?", "answer": "11"}]),
    "cut inside a key": ('[{"question": "Who kept the lamp?", "answer": "Mara"}, {"quest', []),
    "trailing comma inside": ('[{"question": "Who?", "answer": "Mara"},]', []),
    "single quotes": ("[{'question': 'Who?', 'answer': 'Mara'}]", []),
    "lone object": ('{"question": "Who?", "answer": "Mara"}', []),
    "wrapper object": ('{"pairs": [{"question": "Who?", "answer": "Mara"}]}', []),
    "numeric answer": ('[{"question": "How many?", "answer": 112}, {"question": "Who?", "answer": " Mara "}]',
                       [{"question": "Who?", "answer": "Mara"}]),
    "other key names": ('[{"q": "Who?", "a": "Mara"}]', []),
    "fence in the middle": ("Sure!\n```json\n" + AB + "\n```", [PAIR_A, PAIR_B]),  # cut at the first [
    "think block": ("<think>\nplan [1]\n</think>\n" + AB, []),
    "duplicates kept": (json.dumps([PAIR_A, PAIR_A, {"question": "who kept the lamp?", "answer": "mara"}]),
                        [PAIR_A, PAIR_A, {"question": "who kept the lamp?", "answer": "mara"}]),
}


@pytest.mark.parametrize("name", sorted(PAPER_CASES))
def test_paper_parser_accepts_and_rejects_as_the_papers(name):
    text, expected = PAPER_CASES[name]
    assert synthesis.parse_qa_pairs_paper(text) == expected


def test_lenient_parser_differs_from_the_papers_where_documented():
    dup = PAPER_CASES["duplicates kept"][0]
    assert parse_qa_pairs(dup) == [PAIR_A]  # ours dedupes case- and whitespace-insensitively
    for name in ("prose after the array", "trailing comma inside", "single quotes", "lone object", "think block",
                 "wrapper object"):
        assert parse_qa_pairs(PAPER_CASES[name][0]), name  # ours recovers what the paper's drops
    assert parse_qa_pairs('[{"question": "How many?", "answer": 112}]') == [{"question": "How many?", "answer": "112"}]


def test_paper_synthesis_uses_the_papers_parser_and_keeps_duplicates(monkeypatch):
    tok = make_tokenizer()
    dup = PAPER_CASES["duplicates kept"][0]
    monkeypatch.setattr(synthesis, "_generate_texts", lambda m, t, prompts, *a: [dup] * len(prompts))
    settings = SynthesisSettings(chunking="paper", parser="paper")
    pairs, stats = synthesis._synthesize(None, tok, DOC, settings, progress=False)
    assert [{"question": p["question"], "answer": p["answer"]} for p in pairs] == json.loads(dup)
    lenient, _ = synthesis._synthesize(None, tok, DOC, SynthesisSettings(chunking="paper"), progress=False)
    assert len(lenient) == 1
    assert synthesis_cache_path("c", "g", DOC, settings) != synthesis_cache_path("c", "g", DOC, SynthesisSettings(
        chunking="paper"))
    with pytest.raises(ValueError, match="parser"):
        SynthesisSettings(parser="strict")


# ------------------------------------------------------------- batched generation


def test_batched_greedy_generation_equals_unbatched_in_fp32():
    """Left-padded batches give every prompt the tokens it gets alone (greedy, float32)."""
    tok = make_tokenizer()
    model = make_model(len(tok))
    assert next(model.parameters()).dtype == torch_float32()
    chunks = chunk_document(DOC, tok, 5)
    prompts = [synthesis.build_prompt(tok, chunks, i, neighbours=1)[0] for i in range(len(chunks))]
    lengths = {len(tok(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 1  # the batch really is padded
    greedy = SynthesisSettings(temperature=0, max_new_tokens=12)
    alone = [synthesis._generate_texts(model, tok, [p], False, greedy, [0])[0] for p in prompts]
    together = synthesis._generate_texts(model, tok, prompts, False, greedy, list(range(len(prompts))))
    assert together == alone and len(set(alone)) > 1


def test_batch_size_groups_chunks_into_generate_calls(monkeypatch):
    tok = make_tokenizer()
    model = make_model(len(tok))
    batches = []
    original = synthesis._generate_texts

    def recording(m, t, prompts, *args):
        out = original(m, t, prompts, *args)
        batches.append(dict(zip(prompts, out)))
        return out

    monkeypatch.setattr(synthesis, "_generate_texts", recording)
    kwargs = dict(chunk_tokens=5, retries=1, max_new_tokens=6, temperature=0, progress=False)
    synthesize_qa(model, tok, DOC, batch_size=1, **kwargs)
    one = dict(pair for batch in batches for pair in batch.items())
    n = len(batches)
    batches.clear()
    synthesize_qa(model, tok, DOC, batch_size=4, **kwargs)
    assert [len(b) for b in batches] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert dict(pair for batch in batches for pair in batch.items()) == one
    assert synthesis_cache_path("c", "g", DOC, SynthesisSettings(batch_size=4)) != \
        synthesis_cache_path("c", "g", DOC, SynthesisSettings())
    with pytest.raises(ValueError, match="batch_size"):
        SynthesisSettings(batch_size=0)


def torch_float32():
    import torch

    return torch.float32
