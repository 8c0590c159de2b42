import torch

from slimkit.tasks import format_prompt, get_task
from slimkit.tasks.generate import generate, next_token_logprobs


def _prompts(tok, n=7):
    exs = get_task("arith").split("test", n - 2) + get_task("jobs").split("test", 2)
    return [format_prompt(tok, ex.prompt) for ex in exs]


def test_batched_equals_unbatched_greedy(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    batched = generate(model, tok, prompts, max_new_tokens=12, batch_size=4)
    for p, got in zip(prompts, batched, strict=True):
        alone = generate(model, tok, [p], max_new_tokens=12, batch_size=1)[0][0]
        assert got[0].token_ids == alone.token_ids
        assert got[0].text == alone.text
        assert got[0].prompt_ids == tok(p, add_special_tokens=False).input_ids


def test_matches_transformers_generate(tiny):
    model, tok = tiny
    p = _prompts(tok, 3)[0]
    enc = tok(p, return_tensors="pt", add_special_tokens=False)
    ref = model.generate(**enc, max_new_tokens=10, do_sample=False)[0, enc.input_ids.shape[1]:].tolist()
    ours = generate(model, tok, [p], max_new_tokens=10)[0][0].token_ids
    assert ours == ref[:len(ours)] and (len(ours) == 10 or ours[-1] == tok.eos_token_id)


def test_eos_ends_a_completion(tiny):
    model, tok = tiny
    p = _prompts(tok, 3)[0]
    free = generate(model, tok, [p], max_new_tokens=10)[0][0]
    assert free.finish_reason == "length" and len(free.token_ids) == 10
    fake_eos = free.token_ids[3]
    first = free.token_ids.index(fake_eos)
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, fake_eos]
    try:
        out = generate(model, tok, [p], max_new_tokens=10)[0][0]
    finally:
        model.generation_config.eos_token_id = old
    assert out.finish_reason == "eos"
    assert out.token_ids == free.token_ids[:first + 1]
    assert out.text == tok.decode(free.token_ids[:first], skip_special_tokens=True)


def test_stop_strings(tiny):
    model, tok = tiny
    p = _prompts(tok, 3)[0]
    free = generate(model, tok, [p], max_new_tokens=16)[0][0]
    pieces = [tok.decode([i]) for i in free.token_ids]
    k = next(i for i in range(len(pieces) - 1) if pieces[i] and pieces[i] not in "".join(pieces[:i]))
    # a stop string spanning two tokens: the completion ends with the token that completes it
    stop = pieces[k] + pieces[k + 1]
    out = generate(model, tok, [p], max_new_tokens=16, stop=["never-seen-xyz", stop])[0][0]
    assert out.finish_reason == "stop"
    assert out.token_ids == free.token_ids[:k + 2]
    assert out.text == "".join(pieces[:k])
    # a stop string that never appears changes nothing
    same = generate(model, tok, [p], max_new_tokens=16, stop=["never-seen-xyz"])[0][0]
    assert same.token_ids == free.token_ids and same.finish_reason == "length"


def test_sampling_is_seeded_and_shaped(tiny):
    model, tok = tiny
    prompts = _prompts(tok, 4)
    a = generate(model, tok, prompts, max_new_tokens=8, temperature=1.0, num_samples=3, seed=1, batch_size=5)
    b = generate(model, tok, prompts, max_new_tokens=8, temperature=1.0, num_samples=3, seed=1, batch_size=5)
    assert [len(x) for x in a] == [3] * len(prompts)
    assert [[c.token_ids for c in x] for x in a] == [[c.token_ids for c in x] for x in b]
    assert len({tuple(c.token_ids) for x in a for c in x}) > len(prompts)  # samples differ
    g = generate(model, tok, prompts[:1], max_new_tokens=8, num_samples=2)[0]
    assert g[0].token_ids == g[1].token_ids  # greedy samples are identical


def test_next_token_logprobs_match_full_forward(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    ids = [5, 9, tok.eos_token_id]
    lp = next_token_logprobs(model, tok, prompts, ids, batch_size=3)
    for i, p in enumerate(prompts):
        x = tok(p, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            ref = torch.log_softmax(model(x).logits[0, -1].float(), -1)[ids]
        torch.testing.assert_close(lp[i], ref, atol=1e-4, rtol=1e-4)
