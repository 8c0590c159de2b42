"""The torch engine equals a direct transformers computation on the same token ids, for every
normalization, batch size and item order, with and without shared-prefix reuse."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from serve_data import ITEMS, QUERY, many_items
from transformers import AutoModelForCausalLM

from slimkit.errors import RequestError
from slimkit.serve.engine import item_scores
from slimkit.serve.prompt import PromptTemplate
from slimkit.serve.requests import make_job

NORMS = ["labels", "vocab", "logit_diff"]


@pytest.fixture(scope="module")
def hf_model(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def direct(model, job) -> np.ndarray:
    """Each concatenation shared_ids + item_ids alone, full forward, logits of the last position."""
    rows = []
    for item in job.item_ids:
        with torch.no_grad():
            logits = model(torch.tensor([job.shared_ids + item])).logits[0, -1].double()
        labels = logits[job.label_ids]
        lp = torch.log_softmax(labels, -1) if job.normalization == "labels" else \
            labels - torch.logsumexp(logits, -1)
        rows.append(lp.numpy())
    return np.array(rows)


@pytest.fixture(scope="module")
def jobs(torch_engine):
    items = many_items(64)
    return {norm: make_job(torch_engine.tokenizer, PromptTemplate(), QUERY, items, normalization=norm,
                           vocab_size=torch_engine.vocab_size) for norm in NORMS}


@pytest.fixture(scope="module")
def references(hf_model, jobs):
    return {norm: direct(hf_model, job) for norm, job in jobs.items()}


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("max_batch", [1, 7, 64])
def test_equals_direct_transformers(torch_engine, jobs, references, norm, share_prefix, max_batch):
    torch_engine.share_prefix, torch_engine.max_batch = share_prefix, max_batch
    try:
        (got,) = torch_engine.score([jobs[norm]])
    finally:
        torch_engine.share_prefix, torch_engine.max_batch = True, 64
    assert got.shape == (64, 2)
    np.testing.assert_allclose(got, references[norm], atol=1e-4, rtol=0)
    if norm == "labels":
        np.testing.assert_allclose(np.exp(got).sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_score_does_not_depend_on_batch_makeup(torch_engine, jobs, references, norm):
    """Any subset in any order, any request size 1..64: each item's score is its own."""
    job, ref = jobs[norm], references[norm]
    rng = random.Random(0)
    for size in [1, 2, 3, 5, 16, 33, 64]:
        idx = rng.sample(range(64), size)
        sub = type(job)(job.shared_ids, [job.item_ids[i] for i in idx], job.label_ids, norm)
        (got,) = torch_engine.score([sub])
        np.testing.assert_allclose(got, ref[idx], atol=1e-4, rtol=0)


def test_several_jobs_in_one_call(torch_engine, jobs, references):
    got = torch_engine.score([jobs["labels"], jobs["vocab"]])
    np.testing.assert_allclose(got[0], references["labels"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], references["vocab"], atol=1e-4, rtol=0)


def test_item_first_shares_only_the_template_prefix(torch_engine, hf_model):
    tok = torch_engine.tokenizer
    job = make_job(tok, PromptTemplate(), QUERY, ITEMS, normalization="vocab", item_first=True,
                   vocab_size=torch_engine.vocab_size)
    text = tok.decode(job.shared_ids + job.item_ids[0])
    assert text.index(ITEMS[0]) < text.index(QUERY)
    assert QUERY not in tok.decode(job.shared_ids)
    (got,) = torch_engine.score([job])
    np.testing.assert_allclose(got, direct(hf_model, job), atol=1e-4, rtol=0)


def test_contract_concatenation_is_the_full_prompt(torch_engine):
    """shared + item text is exactly the chat-templated jobs prompt; ids are the two parts' ids."""
    from slimkit.tasks import format_prompt
    from slimkit.tasks.jobs import TEMPLATE

    tok = torch_engine.tokenizer
    shared, item = PromptTemplate().split(tok, QUERY, ITEMS[0])
    assert shared + item == format_prompt(tok, TEMPLATE.format(query=QUERY, item=ITEMS[0]))
    job = make_job(tok, PromptTemplate(), QUERY, ITEMS[:1], vocab_size=torch_engine.vocab_size)
    assert job.shared_ids == tok.encode(shared, add_special_tokens=False)
    assert job.item_ids[0] == tok.encode(item, add_special_tokens=False)


def test_scores_from_label_logprobs():
    lp = np.log(np.array([[0.25, 0.75], [0.5, 0.5]]))
    np.testing.assert_allclose(item_scores(lp, "labels"), [0.25, 0.5])
    np.testing.assert_allclose(item_scores(lp, "logit_diff"), [np.log(1 / 3), 0.0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(items=[]), "items is empty"),
    (dict(items=["a", ""]), "item 1 is empty"),
    (dict(labels=["yes", "definitely not a single token"]), "not a single token"),
    (dict(label_ids=[1, 10**9]), "outside the vocabulary"),
    (dict(labels=["yes"], label_ids=[1]), "not both"),
    (dict(labels=["yes", "yes"]), "distinct"),
    (dict(normalization="softmax"), "unknown normalization"),
    (dict(normalization="logit_diff", labels=["yes", "no", "x"]), "exactly two labels"),
])
def test_bad_requests_raise_request_error(torch_engine, kwargs, message):
    args = dict(items=ITEMS, labels=None, label_ids=None, normalization="labels") | kwargs
    with pytest.raises(RequestError, match=message):
        make_job(torch_engine.tokenizer, PromptTemplate(), QUERY, args["items"], labels=args["labels"],
                 label_ids=args["label_ids"], normalization=args["normalization"],
                 vocab_size=torch_engine.vocab_size)


def test_logprobs_equal_direct(torch_engine, hf_model):
    from slimkit.serve.engine import LogProbsJob

    tok = torch_engine.tokenizer
    p, c = tok.encode("Query:\npython developer"), tok.encode(" in berlin yes")
    (res,) = torch_engine.logprobs([LogProbsJob(p, c, top_k=5)])
    with torch.no_grad():
        lp = torch.log_softmax(hf_model(torch.tensor([p + c])).logits[0].double(), -1)
    want = [lp[len(p) - 1 + i, t].item() for i, t in enumerate(c)]
    np.testing.assert_allclose(res.logprobs, want, atol=1e-4)
    for i, top in enumerate(res.top):
        vals, idx = lp[len(p) - 1 + i].topk(5)
        assert [t for t, _ in top] == idx.tolist()
        np.testing.assert_allclose([v for _, v in top], vals.numpy(), atol=1e-4)


def test_dtype_by_name(tiny_dir):
    from slimkit.errors import SlimkitError
    from slimkit.serve.torch_engine import TorchEngine

    engine = TorchEngine(tiny_dir, dtype="bfloat16")
    assert engine.dtype == "bfloat16" and engine.head_weight.dtype == torch.bfloat16
    with pytest.raises(SlimkitError, match="unknown dtype 'fp8'; choose one of float32, bfloat16, float16"):
        TorchEngine(tiny_dir, dtype="fp8")


@pytest.mark.parametrize("max_batch", [1, 5, 64])
def test_mixed_jobs_in_one_call_equal_each_alone(torch_engine, hf_model, max_batch):
    """Cross-request batching: jobs with different queries, prefixes, labels and normalizations in one
    engine call (their items share batches) score as each job alone and as transformers directly."""
    tok, v = torch_engine.tokenizer, torch_engine.vocab_size
    items = many_items(20)
    mixed = [make_job(tok, PromptTemplate(), QUERY, items[:7], normalization="labels", vocab_size=v),
             make_job(tok, PromptTemplate(), "nurse in munich, nights", items[5:9], normalization="vocab", vocab_size=v),
             make_job(tok, PromptTemplate(), QUERY, items[9:], normalization="logit_diff", item_first=True,
                      vocab_size=v),
             make_job(tok, PromptTemplate(), "go", ITEMS, labels=["no", "yes", "x"], normalization="labels",
                      vocab_size=v),
             make_job(tok, PromptTemplate(), QUERY, items[:2], normalization="vocab", vocab_size=v)]
    alone = [torch_engine.score([job])[0] for job in mixed]
    torch_engine.max_batch = max_batch
    try:
        together = torch_engine.score(mixed)
    finally:
        torch_engine.max_batch = 64
    assert set(torch_engine.timing) == {"prefill", "scoring"}
    for job, got, ref in zip(mixed, together, alone, strict=True):
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
        np.testing.assert_allclose(got, direct(hf_model, job), atol=1e-4, rtol=0)


def test_prefix_attention_equals_the_kv_cache_path(torch_engine, tiny_dir):
    """Items attend to their prefix in place by default; the KV-cache path (any other attention
    implementation) gives the same scores on mixed calls (several prefixes, item lengths, padding)."""
    from slimkit.serve.prefix_attention import ATTN
    from slimkit.serve.torch_engine import TorchEngine

    cached = TorchEngine(tiny_dir, attn="sdpa", max_batch=6)
    assert torch_engine.model.config._attn_implementation == ATTN and not cached.prefix_attention
    tok, v = torch_engine.tokenizer, torch_engine.vocab_size
    items = many_items(15)
    mixed = [make_job(tok, PromptTemplate(), query, items[i:i + 5 + i], normalization=norm, vocab_size=v)
             for i, (query, norm) in enumerate([(QUERY, "vocab"), ("go", "labels"), ("nurse in munich " * 9, "vocab")])]
    for got, want in zip(torch_engine.score(mixed), cached.score(mixed), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny random Llama (no q/k norms, unlike Qwen3) with the toy tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from slimkit import artifacts
    from slimkit.toy import toy_tokenizer

    tok = toy_tokenizer()
    torch.manual_seed(5)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                         vocab_size=len(tok), max_position_embeddings=1024,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    return artifacts.save(model, tok, tmp_path_factory.mktemp("llama") / "llama", stage="tiny-random", recipe={})


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_final_layer_at_the_last_tokens_only_changes_no_score(arch, tiny_dir, llama_dir):
    """The final layer run for each item's last token only (the default for Llama-family models) gives
    the scores of the whole final layer, on mixed calls: several prefixes, item lengths, padding; the
    prefill, which stops the final layer at its keys and values, caches the same keys and values."""
    from slimkit.serve.torch_engine import TorchEngine

    engine = TorchEngine(tiny_dir if arch == "qwen3" else llama_dir, max_batch=6)
    assert engine.last_only
    tok, v = engine.tokenizer, engine.vocab_size
    items = many_items(15)
    mixed = [make_job(tok, PromptTemplate(), query, items[i:i + 5 + i], normalization=norm, vocab_size=v)
             for i, (query, norm) in enumerate([(QUERY, "vocab"), ("go", "labels"), ("nurse in munich " * 9, "vocab")])]
    fast = engine.score(mixed)
    prefix_ids = [job.shared_ids for job in mixed]
    short = engine._prefill(prefix_ids)                  # its final layer stops at its keys and values
    engine.last_only = False
    for got, want in zip(fast, engine.score(mixed), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    full = engine._prefill(prefix_ids)
    for (k, v), (k0, v0) in zip(short.layers, full.layers, strict=True):
        for r, n in enumerate(full.lengths):             # the real positions (padding is never read)
            torch.testing.assert_close(k[r, :, :n], k0[r, :, :n], atol=2e-5, rtol=0)
            torch.testing.assert_close(v[r, :, :n], v0[r, :, :n], atol=2e-5, rtol=0)


def test_a_cpu_engine_keeps_freed_memory_for_reuse():
    """glibc's malloc is told (mallopt) to keep freed blocks instead of returning them to the OS."""
    from slimkit.serve.torch_engine import keep_freed_memory

    assert keep_freed_memory()
