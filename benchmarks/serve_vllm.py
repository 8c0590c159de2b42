"""The vLLM side of `benchmarks/serve.py --compare`, run in .venv-vllm as a subprocess:

    .venv-vllm/bin/python benchmarks/serve_vllm.py WORKLOAD.json RESULT.json

WORKLOAD.json: {"model": dir, "threads": n, "labels_text": [...], "methods": [...], "trial": {"methods":
[...], "requests": [...]}, "warmups": [...], "requests": [...]}, each request {"n": N, "shared_ids": [...],
"item_ids": [[...], ...], "label_ids": [...]}. Each request is scored
the way a vLLM user would score it: one `generate`/`classify` call with every item of the request,
prefix caching on, one request at a time. Methods:

- `logprob_token_ids`: one prompt per item (shared + item), `SamplingParams(max_tokens=1,
  logprob_token_ids=labels)`: log P(label) over the vocabulary at the next position.
- `prompt_logprobs`: one prompt per item and label (shared + item + [label]) with `prompt_logprobs=0`:
  log P(label) of the prompt's last token (vLLM does not read the prefix cache for these prompts).
- `score`: `LLM.score`'s pooling path: the model loaded as a sequence classifier whose two classes are
  the label rows of its LM head (vLLM's Qwen3-Reranker conversion, `from_2_way_softmax`), one prompt
  per item through `LLM.classify` on the same token ids; gives P(label 0) over the two labels only.

The trial runs every method on a few requests (exactness and speed); the timed run uses `methods`.
Each engine (generate, pooling) starts once. Result: per method, per request, the wall and CPU seconds
of its call and the label log-probabilities (vocab-normalized for generation, label-normalized for score).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time


def label_logprobs(llm, method: str, req: dict) -> list[list[float]]:
    """One request's label log-probabilities, per item, by `method` (one vLLM call)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    shared, items, labels = req["shared_ids"], req["item_ids"], req["label_ids"]
    if method == "logprob_token_ids":
        sp = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, logprob_token_ids=labels)
        outs = llm.generate([TokensPrompt(prompt_token_ids=shared + it) for it in items], sp, use_tqdm=False)
        return [[o.outputs[0].logprobs[0][t].logprob for t in labels] for o in outs]
    if method == "prompt_logprobs":
        sp = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, prompt_logprobs=0)
        prompts = [TokensPrompt(prompt_token_ids=shared + it + [t]) for it in items for t in labels]
        outs = llm.generate(prompts, sp, use_tqdm=False)
        k = len(labels)
        return [[outs[i * k + j].prompt_logprobs[-1][t].logprob for j, t in enumerate(labels)]
                for i in range(len(items))]
    import math

    outs = llm.classify([TokensPrompt(prompt_token_ids=shared + it) for it in items], use_tqdm=False)
    # from_2_way_softmax: one probability, P(label 0) over the two labels.
    probs = [float(o.outputs.probs[0]) for o in outs]
    return [[math.log(p), math.log1p(-p)] for p in probs]


def start(model: str, runner: str, labels_text: list[str]):
    from vllm import LLM

    common = dict(model=model, dtype="float32", seed=0, enable_prefix_caching=True, enforce_eager=True,
                  distributed_executor_backend="uni")
    if runner == "generate":
        return LLM(**common)
    # The Qwen3-Reranker conversion reads [false, true] label tokens: our label 0 ("yes") is "true".
    return LLM(**common, runner="pooling",
               hf_overrides={"architectures": ["Qwen3ForSequenceClassification"],
                             "classifier_from_token": [labels_text[1], labels_text[0]],
                             "is_original_qwen3_reranker": True})


def run(spec: dict) -> dict:
    out: dict = {"trial": {}, "timed": {}}
    runners = {"logprob_token_ids": "generate", "prompt_logprobs": "generate", "score": "pooling"}
    wanted = list(dict.fromkeys(spec["trial"]["methods"] + spec["methods"]))
    for runner in dict.fromkeys(runners[m] for m in wanted):
        t0 = time.perf_counter()
        llm = start(spec["model"], runner, spec["labels_text"])
        print(f"vllm {runner}: started in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for m in [m for m in wanted if runners[m] == runner]:
            for w in spec["warmups"]:                                       # warm-up
                label_logprobs(llm, m, w)
            for phase, reqs in (("trial", spec["trial"]["requests"] if m in spec["trial"]["methods"] else []),
                                ("timed", spec["requests"] if m in spec["methods"] else [])):
                rows = []
                for req in reqs:
                    t1, c1 = time.perf_counter(), time.process_time()
                    lp = label_logprobs(llm, m, req)
                    rows.append({"n": req["n"], "seconds": time.perf_counter() - t1, "cpu": time.process_time() - c1,
                                 "label_logprobs": lp})
                if rows:
                    out[phase][m] = rows
                    sec = sum(r["seconds"] for r in rows)
                    print(f"vllm {m} {phase}: {sum(r['n'] for r in rows) / sec:.1f} items/s", file=sys.stderr,
                          flush=True)
        del llm
        gc.collect()
    return out


if __name__ == "__main__":
    workload, result = sys.argv[1], sys.argv[2]
    with open(workload) as f:
        spec = json.load(f)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    import torch

    torch.set_num_threads(spec["threads"])
    res = run(spec)
    with open(result + ".tmp", "w") as f:
        json.dump(res, f)
    os.replace(result + ".tmp", result)
