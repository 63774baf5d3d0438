"""RWKU scoring and prompts, on hand-made predictions and the real tokenizer."""

import pytest

from atu.data import Probe
from atu.evaluate import build_prompt, generate, rouge_recall, summarize


def test_rouge_l_recall_of_the_answer():
    assert rouge_recall("He was born in Portland, Maine.", "Portland, Maine") == pytest.approx(100.0)
    assert rouge_recall("Portland", "Portland, Maine") == pytest.approx(50.0)
    assert rouge_recall("I don't know.", "Portland, Maine") == 0.0
    assert rouge_recall("", "Maine") == 0.0  # an empty answer is scored as NOANSWER, not an error
    assert rouge_recall("MAINE", "maine") == pytest.approx(100.0)  # case-insensitive


def test_aggregates_are_count_weighted():
    records = [
        {"set": "forget_fb", "score": 100.0},
        {"set": "forget_qa", "score": 0.0},
        {"set": "forget_qa", "score": 0.0},
        {"set": "forget_qa", "score": 0.0},
        {"set": "neighbor_qa", "score": 50.0},
    ]
    m = summarize(records)
    assert m["forget_fb"] == 100 and m["forget_qa"] == 0
    assert m["forget_all"] == pytest.approx(25.0)  # 1 of 4 probes, not the mean of set means (50)
    assert m["neighbor_all"] == 50 and m["n_probes"] == 5


def test_prompts_follow_rwku(tokenizer):
    fb = Probe("Stephen King's debut novel was ___.", "Carrie", "1", "cloze", "Stephen King")
    qa = Probe("Where was he born?", "Portland", "2", "simple question", "Stephen King")
    suffix = Probe("Where was he born? Sure, here is the answer:", "Portland", "3", "affirmative suffix", "x")
    icl = Probe("Question: a?\nAnswer: b\nQuestion: c?", "d", "3", "incontext learning", "x")
    assert build_prompt(fb, tokenizer) == (
        "Please complete the blank in the following question.\nQuestion: Stephen King's debut novel was ___.\nAnswer:"
    )
    assert build_prompt(qa, tokenizer).startswith("Please briefly answer the following question.\nQuestion: Where")
    assert build_prompt(qa, tokenizer).endswith("\nAnswer:")
    assert build_prompt(suffix, tokenizer).endswith("Sure, here is the answer:")
    assert "Question: Question:" not in build_prompt(icl, tokenizer)
    assert build_prompt(qa, tokenizer, system="Forget X.").startswith("Forget X.\nPlease briefly")


def test_chat_template_is_used_when_the_tokenizer_has_one(tokenizer):
    qa = Probe("Where was he born?", "Portland", "2", "simple question", "x")
    saved = tokenizer.chat_template
    try:
        tokenizer.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<bot>"
        prompt = build_prompt(qa, tokenizer)
        assert prompt.startswith("<user>Please briefly") and prompt.endswith("<bot>Answer:")
    finally:
        tokenizer.chat_template = saved


def test_batched_left_padded_generation_matches_one_at_a_time(tiny_model, tokenizer):
    prompts = ["Question: Who founded Berkshire Hathaway?\nAnswer:", "Hi", "The capital of France is the city of"]
    batched = generate(tiny_model, tokenizer, prompts, batch_size=3, max_new_tokens=8)
    single = [generate(tiny_model, tokenizer, [p], batch_size=1, max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert all("\n" not in out for out in batched)


def test_intro_probes_blank_out_the_name():
    from atu.evaluate.screen import intro_probes

    fb, qa = intro_probes(
        "Stephen King", 'Stephen King is a prolific American author, renowned as the "King of Horror".'
    )
    assert (
        fb.query == '___ is a prolific American author, renowned as the "King of Horror".'
        and fb.answer == "Stephen King"
    )
    assert qa.query.startswith("This person is a prolific") and qa.query.endswith("Who is this person?")
    assert intro_probes("Ada Lovelace", "An intro that does not name her.") == []


def test_screening_ranks_targets_by_score(tiny_model, tokenizer):
    from atu.evaluate.screen import screen

    rows = screen(tiny_model, tokenizer, ["Stephen King", "Socrates", "Karl Marx"], batch_size=8)
    assert {r["target"] for r in rows} == {"Stephen King", "Socrates", "Karl Marx"}
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert all(r["source"] == "probes" and r["n_probes"] >= 30 for r in rows)
