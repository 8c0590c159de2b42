"""Context compression on the toy jobs task: tables "auc", "compressor speed" and "scoring speed" of
benchmarks/results/context.{json,md,png}.

    slimkit compress-context train --out runs/ctx-clf --n 240 --steps 1200          # the classifier
    slimkit compress-context adapt toy:teacher --compressor runs/ctx-clf --rate 0.25 --out runs/scorer-clf --steps 800
    slimkit compress-context adapt toy:teacher --compressor head --rate 0.25 --out runs/scorer-head --steps 800
    slimkit compress-context adapt toy:teacher --compressor random --rate 0.25 --out runs/scorer-random --steps 800
    python benchmarks/context.py --part auc --classifier runs/ctx-clf --adapted runs/scorer-clf \
        --adapted-head runs/scorer-head --adapted-random runs/scorer-random             # not timed
    flock /tmp/slimkit-bench.lock python benchmarks/context.py --part speed --classifier runs/ctx-clf \
        --adapted runs/scorer-clf

auc: jobs AUC (P(yes) after the scoring template, as the scorer computes it) on full postings and on
postings compressed to 2x, 4x and 10x (rate 0.5, 0.25, 0.1) per layout. Scorers: the original teacher,
and the teacher adapted to compressed postings (`adapted`: to the classifier's; `adapted-head`,
`adapted-random`: to that baseline's, so that each baseline is read by a model trained for it).
Compressors: surprisal under the student and the trained classifier, each without and with the query
(question-aware, the query's terms protected); head truncation and random dropping at the same budget;
and `fields`, an oracle that knows the task's vocabulary (titles, places, companies, skills) and keeps
those words first. Rate: the share of postings within 5% of the requested rate, overall and among the
postings long enough for a whole token count to lie within 5% (postings are ~35 tokens: at 10x the
5% band around 3.5 tokens holds no whole count).
speed: compressor items/s (in process), and scoring items/s of a gRPC server in this process, full
postings (original teacher) vs compressing each request's items (`--compress-items`, compressor
included; served by the adapted teacher when given), one query x 32 postings per request.
`--scorer-shape HIDDEN,LAYERS,MLP` adds scoring rows for a randomly initialised Qwen3 of that shape
(toy tokenizer; its scores mean nothing, its cost is a real scorer's): the toy teacher (1.2M
parameters) costs about what the compressor does per posting, a real scorer many times more.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _common import RESULTS, model_name, provenance, save

from slimkit import artifacts
from slimkit.compress import context
from slimkit.compress.context.scorers import HeadScorer
from slimkit.compress.context.words import TOLERANCE, band
from slimkit.tasks import Example, get_task
from slimkit.tasks.eval import eval_jobs
from slimkit.tasks.jobs import COMPANIES, PLACES, TEMPLATE, TITLES

RATES = (0.5, 0.25, 0.1)


class FieldsOracle(HeadScorer):
    """Keeps the words of the task's fields (titles, places, companies, skills) first, then the head."""
    kind = "fields"
    WORDS = {w.lower().strip(",.") for phrase in [*TITLES, *PLACES, *COMPANIES, *(s for v in TITLES.values() for s in v)]
             for w in phrase.split()}

    def word_scores(self, texts, spans, queries, encoded=None):
        return [[(1000.0 if t[s:e].lower().strip(",.") in self.WORDS else 0.0) - i for i, (s, e) in enumerate(sp)]
                for t, sp in zip(texts, spans, strict=True)]


def examples(layouts: list[str], n: int) -> dict[str, list[Example]]:
    pool = get_task("jobs").split("test", 600) + get_task("jobs").split("validation", 400)
    return {lay: [ex for ex in pool if ex.meta["layout"] == lay][:n] for lay in layouts}


def compressors(args, tok) -> dict[str, context.ContextCompressor]:
    return {"surprisal": context.load(args.surprisal), "classifier": context.load(args.classifier),
            "head": context.load("head", tokenizer=tok), "random": context.load("random", tokenizer=tok),
            "fields": context.ContextCompressor(FieldsOracle(), tok, name="fields")}


def with_posting(ex: Example, posting: str) -> Example:
    return Example(prompt=TEMPLATE.format(query=ex.meta["query"], item=posting), answer=ex.answer, meta=ex.meta)


def rate_stats(out: list[context.Compressed], rate: float) -> dict:
    """Achieved rate: the share of postings within 5% of `rate`, the share long enough for a whole token
    count to lie within 5% (`reachable`), and the share within 5% among those."""
    within = [abs(c.ratio / rate - 1) <= TOLERANCE for c in out]
    reach = [lo <= hi for lo, hi in (band(rate, c.tokens_in) for c in out)]
    hits = [w for w, r in zip(within, reach, strict=True) if r]
    return {"within_5pct": round(sum(within) / len(out), 3), "reachable": round(sum(reach) / len(out), 3),
            "within_5pct_reachable": round(sum(hits) / len(hits), 3) if hits else None}


# Which compressors each scorer is measured with: the original with all of them; a model adapted to the
# classifier with the classifier (and, for reference, the others); one adapted to a baseline with it.
PLAN = {"original": None, "adapted": ("classifier", "head", "random", "fields"), "adapted-head": ("head",),
        "adapted-random": ("random",)}


def scorers(args) -> dict[str, str]:
    given = {"original": args.teacher, "adapted": args.adapted, "adapted-head": args.adapted_head,
             "adapted-random": args.adapted_random}
    return {k: v for k, v in given.items() if v}


def auc_part(args, tok) -> list[dict]:
    rows = []
    comps = compressors(args, tok)
    models = {name: artifacts.load(path) for name, path in scorers(args).items()}
    for layout, exs in examples(args.layouts, args.n).items():
        postings = [ex.meta["posting"] for ex in exs]
        full = {name: eval_jobs(m, t, exs)["auc"] for name, (m, t) in models.items()}
        for name in models:
            rows.append({"layout": layout, "scorer": name, "method": "full", "query": False, "rate": 1.0,
                         "ratio": 1.0, "compression": 1.0, "auc": round(full[name], 4),
                         "auc_drop": round(full["original"] - full[name], 4), "n": len(exs)})
        for method, comp in comps.items():
            for use_query in ((False, True) if method in ("surprisal", "classifier") else (False,)):
                users = [s for s in models if PLAN[s] is None or (method in PLAN[s] and not use_query)]
                if not users:
                    continue
                queries = [ex.meta["query"] for ex in exs] if use_query else None
                for rate in RATES:
                    out = comp.compress(postings, rate=rate, queries=queries)
                    short = [with_posting(ex, c.text) for ex, c in zip(exs, out, strict=True)]
                    ratio = sum(c.tokens_out for c in out) / sum(c.tokens_in for c in out)
                    for name in users:
                        auc = eval_jobs(*models[name], short)["auc"]
                        rows.append({"layout": layout, "scorer": name, "method": method, "query": use_query,
                                     "rate": rate, "ratio": round(ratio, 4), "compression": round(1 / ratio, 2),
                                     "auc": round(auc, 4), "auc_drop": round(full["original"] - auc, 4),
                                     **rate_stats(out, rate), "n": len(exs)})
                        print(rows[-1], flush=True)
    return rows


def speed_part(args, tok) -> tuple[list[dict], list[dict]]:
    import torch

    from slimkit.serve.client import ScorerClient
    from slimkit.serve.compression import ItemCompression
    from slimkit.serve.server import make_server
    from slimkit.serve.torch_engine import TorchEngine

    exs = [ex for lay in examples(args.layouts, args.n).values() for ex in lay]
    postings = [ex.meta["posting"] for ex in exs]
    comps = {k: v for k, v in compressors(args, tok).items() if k in ("surprisal", "classifier")}
    comp_rows = []
    for name, comp in comps.items():
        for use_query in (False, True):
            queries = [ex.meta["query"] for ex in exs] if use_query else None
            comp.compress(postings[:32], rate=0.25, queries=queries[:32] if queries else None)   # warm up
            t0 = time.perf_counter()
            comp.compress(postings, rate=0.25, queries=queries)
            comp_rows.append({"method": name, "query": use_query, "rate": 0.25,
                              "items_per_s": round(len(postings) / (time.perf_counter() - t0), 1)})
            print(comp_rows[-1], flush=True)
    # One query x 32 postings per request, as a search engine re-ranks candidates.
    requests = [(exs[i].meta["query"], postings[i:i + 32]) for i in range(0, len(postings) - 31, 32)]
    if args.scorer_shape:
        scorer = random_scorer(args.scorer_shape)
        engine = served = TorchEngine(scorer, max_batch=64)
        settings = [("classifier", False, 0.25), ("classifier", False, 0.1)]
        requests = requests[:args.scorer_requests]
    else:
        scorer = "toy:teacher"
        engine = TorchEngine(args.teacher, max_batch=64)
        served = TorchEngine(args.adapted, max_batch=64) if args.adapted else engine   # serves compressed items
        settings = [(name, False, rate) for name in comps for rate in RATES] + [("classifier", True, 0.25)]
    servers = {("full", False, 1.0): make_server(engine, "127.0.0.1:0")}
    for name, query, rate in settings:
        servers[(name, query, rate)] = make_server(served, "127.0.0.1:0",
                                                   compression=ItemCompression(comps[name], rate, with_query=query))
    times: dict = {k: [] for k in servers}
    saved: dict = {}
    torch.set_num_threads(args.threads)
    for _ in range(args.repeats):                        # interleaved, so load changes hit every setting alike
        for key, (_, port) in servers.items():
            with ScorerClient(f"127.0.0.1:{port}", timeout=600) as client:
                t0 = time.perf_counter()
                saved[key] = sum(client.score(q, items).tokens_saved for q, items in requests)
                times[key].append(time.perf_counter() - t0)
    for server, _ in servers.values():
        server.stop(0).wait()
    n_items = sum(len(items) for _, items in requests)
    base = statistics.median(times[("full", False, 1.0)])
    score_rows = []
    for (name, query, rate), ts in times.items():
        med = statistics.median(ts)
        score_rows.append({"scorer": model_name(scorer), "method": name, "query": query, "rate": rate, "items_per_s": round(n_items / med, 1),
                           "speedup_vs_full": round(base / med, 3),
                           "tokens_saved_per_item": round(saved[(name, query, rate)] / n_items, 2)})
        print(score_rows[-1], flush=True)
    return comp_rows, score_rows


def random_scorer(shape: str) -> str:
    """A randomly initialised Qwen3 of shape "HIDDEN,LAYERS,MLP" (head_dim 64, 2 KV heads) in a temp dir."""
    import tempfile

    from slimkit.toy import make_tiny_model_dir

    hidden, layers, mlp = (int(x) for x in shape.split(","))
    path = Path(tempfile.mkdtemp()) / f"random-qwen3-h{hidden}-l{layers}-mlp{mlp}"
    make_tiny_model_dir(path, hidden=hidden, layers=layers, heads=hidden // 64, kv_heads=2, head_dim=64,
                        intermediate=mlp)
    return str(path)


def plot(rows: list[dict]):
    def draw(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        layouts = sorted({r["layout"] for r in rows})
        fig, axes = plt.subplots(1, len(layouts), figsize=(6 * len(layouts), 4.5), squeeze=False)
        for ax, lay in zip(axes[0], layouts, strict=True):
            series = sorted({(r["scorer"], r["method"], r["query"]) for r in rows
                             if r["layout"] == lay and r["method"] != "full"})
            for scorer, method, query in series:
                full = next(r["auc"] for r in rows if r["layout"] == lay and r["method"] == "full" and r["scorer"] == scorer)
                pts = sorted((r["compression"], r["auc"]) for r in rows if r["layout"] == lay and
                             r["scorer"] == scorer and r["method"] == method and r["query"] == query)
                ax.plot([1.0] + [p[0] for p in pts], [full] + [p[1] for p in pts], marker="o",
                        linestyle="--" if method in ("head", "random", "fields") else "-",
                        linewidth=2.2 if scorer != "original" else 1.0,
                        label=f"{method}{' +query' if query else ''}{'' if scorer == 'original' else f' [{scorer}]'}")
            ax.set_xscale("log")
            ax.set_xlabel("achieved compression (input tokens / output tokens)")
            ax.set_ylabel("jobs AUC (original or adapted teacher)")
            ax.set_title(f"layout: {lay}")
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
        plt.close(fig)
    return draw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", required=True, help="a classifier dir (slimkit compress-context train)")
    ap.add_argument("--surprisal", default="toy:student", help="the causal LM whose surprisal scores words")
    ap.add_argument("--teacher", default="toy:teacher", help="the scoring model")
    ap.add_argument("--adapted", help="the teacher adapted to the classifier's compression (compress-context adapt)")
    ap.add_argument("--adapted-head", help="the teacher adapted to head truncation")
    ap.add_argument("--adapted-random", help="the teacher adapted to random dropping")
    ap.add_argument("--part", choices=("auc", "speed"), required=True)
    ap.add_argument("--layouts", nargs="+", default=["scattered", "prose", "header"])
    ap.add_argument("--n", type=int, default=200, help="postings per layout")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--scorer-shape", help="speed: score with a random Qwen3 of shape HIDDEN,LAYERS,MLP instead")
    ap.add_argument("--scorer-requests", type=int, default=6, help="speed, with --scorer-shape: requests per pass")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    clf = artifacts.read_manifest(args.classifier)
    settings = {"n_per_layout": args.n, "teacher": model_name(args.teacher), "surprisal": model_name(args.surprisal),
                "classifier": f"{Path(args.classifier).name} ({clf.get('recipe')}; held-out token accuracy "
                              f"{clf.get('metrics', {}).get('heldout_token_accuracy', 0):.3f})",
                "threads": args.threads,
                **{k: model_name(v) for k, v in scorers(args).items() if k != "original"}}
    tok = artifacts.load_tokenizer(args.teacher)
    if args.part == "auc":
        rows = auc_part(args, tok)
        save("context", "auc", rows, key=("layout", "scorer", "method", "query", "rate"), settings=settings,
             plot=plot(rows),
             about="Jobs AUC on compressed postings (test + validation splits) per layout, of the original teacher "
                   "and of the teacher adapted to compressed postings (`slimkit compress-context adapt`; `adapted`: "
                   "to the classifier, `adapted-head` / `adapted-random`: to that baseline); `auc_drop`: against "
                   "the original teacher on full postings; `ratio`: achieved fraction of tokens kept; `compression` "
                   "= 1 / ratio; `within_5pct`: share of postings within 5% of the requested rate; `reachable`: "
                   "share long enough for a whole token count to lie within 5%; `within_5pct_reachable`: within "
                   "5% among those.",
             out=args.out)
    else:
        run = provenance(settings)                      # one run for both tables (the first save dirties the tree)
        comp_rows, score_rows = [[{**r, "run": run} for r in rows] for rows in speed_part(args, tok)]
        save("context", "compressor speed", comp_rows, key=("method", "query", "rate"), settings=settings,
             about="Compressor items/s in process (toy postings, rate 0.25, batch of all postings).", out=args.out)
        save("context", "scoring speed", score_rows, key=("scorer", "method", "query", "rate"), settings=settings,
             about="Scoring items/s of the scorer (`scorer`: the toy teacher, or a random model of a larger shape, `--scorer-shape`) behind a gRPC server in this process (1 query x 32 postings "
                   "per request, --compress-items RATE with each compressor, `query`: --compress-with-query; "
                   "compressor included), "
                   "median of interleaved repeats; speedup against full postings in the same process.",
             out=args.out)


if __name__ == "__main__":
    main()
