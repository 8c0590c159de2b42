import pytest

from slimkit.tasks import format_prompt, get_task, training_text


def _pieces(tok, text):
    return [tok.decode([i]) for i in tok(text, add_special_tokens=False).input_ids]


def test_every_digit_is_its_own_token(tok):
    ids = tok("1234567890", add_special_tokens=False).input_ids
    assert len(ids) == 10
    assert [tok.decode([i]) for i in ids] == list("1234567890")
    text = format_prompt(tok, "What is 37 + 45?") + "37 + 45 = 82. Answer: 82"
    digits = [p for p in _pieces(tok, text) if any(c.isdigit() for c in p)]
    assert all(len(p) == 1 for p in digits)


def test_yes_no_are_single_tokens_after_the_template(tok):
    ex = get_task("jobs").split("test", 1)[0]
    prompt = format_prompt(tok, ex.prompt)
    n = len(tok(prompt, add_special_tokens=False).input_ids)
    for label in ("yes", "no"):
        ids = tok(prompt + label, add_special_tokens=False).input_ids
        assert len(ids) == n + 1
        assert ids[-1] == tok(label, add_special_tokens=False).input_ids[0]


def test_phrases_merge_across_spaces(tok):
    assert ". Check: " in [tok.decode([i]) for i in tok("12. Check: 12", add_special_tokens=False).input_ids]
    assert "? Be concise." in _pieces(tok, "What is 3 + 4? Be concise.")


@pytest.mark.parametrize("name", ["arith", "jobs"])
def test_prompt_and_answer_tokenize_like_the_whole(tok, name):
    for ex in get_task(name).split("test", 200):
        prompt, answer = training_text(tok, ex)
        whole = tok(prompt + answer, add_special_tokens=False).input_ids
        parts = tok(prompt, add_special_tokens=False).input_ids + tok(answer, add_special_tokens=False).input_ids
        assert whole == parts
        assert whole[-1] == tok.eos_token_id
        assert tok.decode(whole) == prompt + answer


def test_tokenizer_round_trips_through_disk(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    text = format_prompt(tok2, "What is 3 * 4? Be concise.")
    assert tok2(text).input_ids == tok(text).input_ids
    assert tok2.eos_token == "<|im_end|>" and tok2.pad_token == "<|endoftext|>"
    assert tok2.padding_side == "left"
