"""Which text each position must predict: the first k encoder tokens ending after the LLM token."""

from atu.methods.atu import make_chunks, window_spans


def test_window_starts_after_the_token_and_spans_k_encoder_tokens():
    text = "Warren Buffett is the CEO of Berkshire Hathaway."
    # encoder tokens by hand: words and the final period
    enc = [(0, 6), (7, 14), (15, 17), (18, 21), (22, 25), (26, 28), (29, 38), (39, 47), (47, 48)]
    llm_ends = [0, 6, 14, 17]
    spans = window_spans(llm_ends, enc, k=3)
    assert [text[s:e] for s, e in spans] == ["Warren Buffett is", "Buffett is the", "is the CEO", "the CEO of"]


def test_token_straddling_the_boundary_is_included_and_short_tails_have_no_window():
    enc = [(0, 4), (4, 8), (8, 12)]
    spans = window_spans([2, 5, 9, 12], enc, k=2)
    assert spans[0] == (0, 8)  # encoder token (0,4) ends after char 2: it is part of the window
    assert spans[1] == (4, 12)
    assert spans[2] is None and spans[3] is None  # fewer than k tokens left


def test_chunks_use_real_tokenizers_and_windows_follow_each_token(tokenizer, encoder):
    text = "The cat sat on the mat and the dog ran to the park."
    chunks = make_chunks([text], tokenizer, encoder.tokenizer, k=3, max_length=64)
    assert len(chunks) == 1
    c = chunks[0]
    assert c.ids[0] == tokenizer.bos_token_id
    assert c.windows[0] == "The cat sat"  # BOS predicts the first k encoder tokens
    pieces = tokenizer.convert_ids_to_tokens(c.ids)
    assert c.windows[pieces.index("▁cat")] == "sat on the"
    assert c.windows[pieces.index("▁dog")] == "ran to the"
    assert c.windows[-1] is None and c.windows[-2] is None  # fewer than k tokens follow: masked out


def test_long_texts_are_split_not_truncated(tokenizer, encoder):
    text = " ".join(f"word{i}" for i in range(300))
    chunks = make_chunks([text], tokenizer, encoder.tokenizer, k=4, max_length=32)
    n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert all(len(c.ids) <= 32 for c in chunks)
    assert sum(len(c.ids) - 1 for c in chunks) == n_tokens  # every token kept, one BOS per chunk
    # windows of a later chunk still reach into the following text
    assert chunks[0].windows[-1] is not None
