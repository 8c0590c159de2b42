"""Benchmark slimkit.kernels: peak extra memory and time of each backend, forward + backward.

CPU (default): reference vs chunked, fp32, each shape in a fresh subprocess:
    .venv/bin/python benchmarks/kernels.py --device cpu
GPU: triton vs reference vs Liger-Kernel (LigerFusedLinearJSD, LigerFusedLinearCrossEntropyLoss), bf16:
    python benchmarks/kernels.py --device cuda          (needs liger-kernel installed)
Results: benchmarks/results/kernels.{json,md}, tables "cpu", "cpu ratios" (the headline shape),
"cpu skipped" and "cuda", "cuda gradient error"; each row with its command, commit and machine.

Ops: "logprob" = linear_logprob, loss = logprob.sum(); "kl" = linear_kl with a live teacher (hidden
size H, same vocabulary), kind="forward", reduction="sum"; both forward + backward wrt hidden and weight.

How CPU memory is measured: each shape runs in its own process with MALLOC_MMAP_THRESHOLD_=65536, so
every tensor above 64 KiB is its own mmap and is returned to the OS when freed (glibc's adaptive
threshold would otherwise keep freed blocks in the heap and RSS would overstate). torch's CPU
allocator does not cache. Before each measured call the peak-RSS mark is reset (writing 5 to
/proc/self/clear_refs); then
- peak_extra_mb = VmHWM during the call - VmRSS before it (inputs already allocated; everything the
  call allocates counts, including the gradients it returns: dW is V*H floats for every backend);
- workspace_mb = VmHWM - VmRSS after the call (gradients still held): the memory the op needs beyond
  its inputs and outputs.
Backends of one shape run in the same process, interleaved, `--reps` times (time: median; memory: max),
so that load from other processes on the machine hits them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30

# CPU guards: 24 GiB shared by several processes; 2 cores at about 40 GFLOP/s.
REF_MEM_LIMIT = 6 * GIB
CPU_FLOP_LIMIT = 6e11  # matmul FLOPs of one forward + backward; bigger shapes are recorded as skipped


def ref_peak_bytes(op: str, n: int, v: int) -> int:
    """Estimated peak of the reference backend: fp32 [N, V] tensors alive at once (logits, log-probs,
    probs, teacher log-probs and probs, products, their gradients): about 8 for kl and 7 for logprob,
    as measured at N=4096, V=32000 (4135 and 3510 MiB)."""
    return (8 if op == "kl" else 7) * n * v * 4


def matmul_flops(op: str, backend: str, n: int, h: int, v: int) -> float:
    """Forward + backward matmul FLOPs (2 N H V each): logprob: logits, recompute (chunked), dH, dW;
    kl: student and teacher logits, dH, dW (chunked computes the gradients in its forward)."""
    count = {"logprob": 4 if backend != "reference" else 3, "kl": 4}[op]
    return count * 2.0 * n * h * v


# ------------------------------------------------------------------------------------------ CPU worker


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _make(op, n, h, v, dtype, device, seed=0):
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * h**-0.5).to(device=device, dtype=dtype).requires_grad_()
    extra = {}
    if op == "kl":
        extra["th"] = torch.randn(n, h, generator=g).to(device=device, dtype=dtype)
        extra["tw"] = (torch.randn(v, h, generator=g) * h**-0.5).to(device=device, dtype=dtype)
    else:
        extra["targets"] = torch.randint(0, v, (n,), generator=g).to(device)
    return hidden, weight, extra


def _step(op, backend, hidden, weight, extra, rows):
    from slimkit.kernels import LiveTeacher, linear_kl, linear_logprob

    if op == "kl":
        out = linear_kl(hidden, weight, LiveTeacher(extra["th"], extra["tw"]), kind="forward",
                        reduction="sum", rows=rows, backend=backend)
        out.loss.backward()
    else:
        out = linear_logprob(hidden, weight, extra["targets"], rows=rows, backend=backend)
        out.logprob.sum().backward()


def _backend(variant: str) -> str:
    """'chunked:525' -> 'chunked' with SLIMKIT_KERNEL_CHUNK_ROWS=525 (others: as is, no fixed rows)."""
    backend, _, rows = variant.partition(":")
    if rows:
        os.environ["SLIMKIT_KERNEL_CHUNK_ROWS"] = rows
    else:
        os.environ.pop("SLIMKIT_KERNEL_CHUNK_ROWS", None)
    return backend


def worker(spec: dict) -> dict:
    """Run one shape: every (backend, rows fraction) variant, interleaved, spec['reps'] times."""
    import gc

    import torch

    torch.set_num_threads(spec["threads"])
    op, n, h, v = spec["op"], spec["n"], spec["h"], spec["v"]
    hidden, weight, extra = _make(op, n, h, v, torch.float32, "cpu")
    variants = [(b, f) for b, f in spec["variants"]]  # backend may be "chunked:ROWS" (fixed chunk rows)
    # Warm up every code path on a small slice (lazy library init must not count as the op's memory).
    small = _make(op, 64, h, v, torch.float32, "cpu", seed=1)
    for b, _ in variants:
        _step(op, _backend(b), *small, None)
    del small
    g = torch.Generator().manual_seed(2)
    rows_of = {f: None if f == 1.0 else torch.randperm(n, generator=g)[: int(n * f)].sort().values
               for _, f in variants}
    res = {f"{b}@{f}": {"times_s": [], "cpu_times_s": [], "peak_extra_mb": 0.0, "workspace_mb": 0.0}
           for b, f in variants}
    for rep in range(spec["reps"]):
        order = variants if rep % 2 == 0 else variants[::-1]
        for b, f in order:
            hidden.grad = weight.grad = None
            gc.collect()
            before = _rss("VmRSS")
            _reset_peak()
            t0, c0 = time.perf_counter(), time.process_time()
            _step(op, _backend(b), hidden, weight, extra, rows_of[f])
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            peak, after = _rss("VmHWM"), _rss("VmRSS")
            r = res[f"{b}@{f}"]
            r["times_s"].append(round(dt, 3))
            r["cpu_times_s"].append(round(dc, 3))
            r["peak_extra_mb"] = max(r["peak_extra_mb"], round((peak - before) / 2**20, 1))
            r["workspace_mb"] = max(r["workspace_mb"], round((peak - after) / 2**20, 1))
    for r in res.values():
        r["time_s"] = round(statistics.median(r["times_s"]), 3)
        r["cpu_s"] = round(statistics.median(r["cpu_times_s"]), 3)
    return res


# ------------------------------------------------------------------------------------------ CPU driver


def cpu_cases(grid: str, reps: int) -> list[dict]:
    """The headline shape first (with rows = 50%, `reps` interleaved runs), then the grid (1 run
    each), capped by CPU_FLOP_LIMIT, then one shape whose reference does not fit in 6 GiB, for the
    chunked path alone."""
    cases = [dict(op="kl", n=4096, h=512, v=32000, reps=reps,
                  variants=[("reference", 1.0), ("chunked", 1.0), ("chunked", 0.5), ("reference", 0.5),
                            ("chunked:525", 0.5)]),
             dict(op="logprob", n=4096, h=512, v=32000, reps=reps,
                  variants=[("reference", 1.0), ("chunked", 1.0), ("chunked", 0.5)])]
    if grid == "headline":
        return cases
    for v in (32000, 151936):
        for h in (896, 2048, 4096):
            for n in (1024, 4096, 16384):
                for op in ("logprob", "kl"):
                    if (op, n, h, v) == ("logprob", 4096, 896, 151936):
                        continue  # forced below
                    cases.append(dict(op=op, n=n, h=h, v=v, reps=1, variants=[("reference", 1.0), ("chunked", 1.0)]))
    cases.append(dict(op="logprob", n=4096, h=896, v=151936, reps=1, force=True,
                      variants=[("reference", 1.0), ("chunked", 1.0)]))
    return cases


def run_cpu(args) -> dict:
    results = []
    for case in cpu_cases(args.grid, args.reps):
        op, n, h, v = case["op"], case["n"], case["h"], case["v"]
        row = dict(op=op, n=n, h=h, v=v, dtype="float32", skipped={}, results={})
        variants = []
        for b, f in case["variants"]:
            est_mem = ref_peak_bytes(op, int(n * f), v) if b == "reference" else 0
            flops = matmul_flops(op, b.partition(":")[0], int(n * f), h, v)
            if est_mem > REF_MEM_LIMIT:
                row["skipped"][f"{b}@{f}"] = f"reference peak estimated at {est_mem / GIB:.1f} GiB > 6 GiB"
            elif flops > CPU_FLOP_LIMIT and not case.get("force"):
                row["skipped"][f"{b}@{f}"] = f"{flops / 1e12:.1f} TFLOP of matmuls: too slow for this CPU grid"
            else:
                variants.append((b, f))
        if variants:
            spec = dict(op=op, n=n, h=h, v=v, variants=variants, reps=case["reps"], threads=args.threads)
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads))
            t0 = time.time()
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                                  capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
            else:
                row["results"] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{op:8s} N={n:<6d} H={h:<5d} V={v:<7d} {time.time() - t0:6.1f}s "
                  + " ".join(f"{k}: {r['time_s']}s cpu {r['cpu_s']}s {r['peak_extra_mb']}/{r['workspace_mb']}MB"
                             for k, r in row["results"].items())
                  + (f" ERROR {row['error']}" if "error" in row else ""), flush=True)
        results.append(row)
    return {"device": "cpu", "cases": results, "ratios": cpu_ratios(results)}


def cpu_ratios(rows: list[dict]) -> dict:
    kl = next((r for r in rows if r["op"] == "kl" and (r["n"], r["h"], r["v"]) == (4096, 512, 32000)), None)
    if kl is None or "error" in kl or "chunked@1.0" not in kl["results"] or "reference@1.0" not in kl["results"]:
        return {}
    res = kl["results"]
    ref, ch, half = res["reference@1.0"], res["chunked@1.0"], res.get("chunked@0.5")
    out = {
        "chunked_vs_reference_peak_extra": round(ch["peak_extra_mb"] / ref["peak_extra_mb"], 4),
        "chunked_vs_reference_workspace": round(ch["workspace_mb"] / ref["workspace_mb"], 4),
        "chunked_vs_reference_time": round(ch["time_s"] / ref["time_s"], 3),
        "chunked_vs_reference_cpu_time": round(ch["cpu_s"] / ref["cpu_s"], 3),
    }
    if half:
        out |= {"rows50_vs_all_chunked_time": round(half["time_s"] / ch["time_s"], 3),
                "rows50_vs_all_chunked_cpu_time": round(half["cpu_s"] / ch["cpu_s"], 3),
                "rows50_vs_all_chunked_peak_extra": round(half["peak_extra_mb"] / ch["peak_extra_mb"], 3),
                "rows50_vs_all_chunked_workspace": round(half["workspace_mb"] / ch["workspace_mb"], 3)}
    if "chunked:525@0.5" in res:
        fixed = res["chunked:525@0.5"]
        out |= {"rows50_fixed525_vs_all_chunked_cpu_time": round(fixed["cpu_s"] / ch["cpu_s"], 3),
                "rows50_fixed525_vs_all_chunked_time": round(fixed["time_s"] / ch["time_s"], 3),
                "rows50_fixed525_vs_all_chunked_peak_extra": round(fixed["peak_extra_mb"] / ch["peak_extra_mb"], 3)}
    if "reference@0.5" in res:
        rh = res["reference@0.5"]
        out |= {"rows50_vs_all_reference_time": round(rh["time_s"] / ref["time_s"], 3),
                "rows50_vs_all_reference_cpu_time": round(rh["cpu_s"] / ref["cpu_s"], 3),
                "rows50_vs_all_reference_peak_extra": round(rh["peak_extra_mb"] / ref["peak_extra_mb"], 3)}
    lp = next((r for r in rows if r["op"] == "logprob" and (r["n"], r["h"], r["v"]) == (4096, 512, 32000)), None)
    if lp and {"chunked@1.0", "chunked@0.5"} <= lp["results"].keys():  # linear_logprob, same shape
        full, half = lp["results"]["chunked@1.0"], lp["results"]["chunked@0.5"]
        out |= {"logprob_rows50_vs_all_chunked_time": round(half["time_s"] / full["time_s"], 3),
                "logprob_rows50_vs_all_chunked_cpu_time": round(half["cpu_s"] / full["cpu_s"], 3),
                "logprob_rows50_vs_all_chunked_peak_extra": round(half["peak_extra_mb"] / full["peak_extra_mb"], 3)}
    return out


# ------------------------------------------------------------------------------------------------- GPU


PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0}


def _gpu_peak(name: str, override: float | None) -> float:
    if override:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), float("nan"))


def _cuda_time(fn, reps: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _cuda_mem(fn) -> float:
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _cuda_case(n: int, h: int, v: int, reps: int, peak: float) -> dict:
    """One shape, bf16: triton logprob forward (FLOP rate), and forward + backward time and peak extra
    memory of triton vs Liger for cross entropy and JSD (live teacher of the same size)."""
    import torch
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss, LigerFusedLinearJSD

    from slimkit.kernels import LiveTeacher, linear_kl, linear_logprob

    dev = torch.device("cuda")
    hidden, weight, extra = _make("kl", n, h, v, torch.bfloat16, dev)
    targets = torch.randint(0, v, (n,), device=dev)
    teacher = LiveTeacher(extra["th"], extra["tw"])
    ce_liger, jsd_liger = LigerFusedLinearCrossEntropyLoss(), LigerFusedLinearJSD(jsd_beta=0.5, temperature=1.0)
    row: dict = dict(n=n, h=h, v=v, dtype="bfloat16")

    def lp_fwd():
        with torch.no_grad():
            linear_logprob(hidden, weight, targets, backend="triton")

    t = _cuda_time(lp_fwd, reps)
    row["triton_logprob_fwd_s"] = t
    row["triton_logprob_fwd_tflops"] = 2 * n * h * v / t / 1e12
    row["triton_logprob_fwd_frac_peak"] = row["triton_logprob_fwd_tflops"] / peak

    def run(fn):
        def step():
            hidden.grad = weight.grad = None
            fn().backward()
        return step

    fns = {
        "triton_ce": run(lambda: -linear_logprob(hidden, weight, targets, backend="triton").logprob.mean()),
        "liger_ce": run(lambda: ce_liger(weight, hidden, targets)),
        "triton_jsd": run(lambda: linear_kl(hidden, weight, teacher, kind="jsd", beta=0.5, reduction="mean",
                                            backend="triton").loss),
        "liger_jsd": run(lambda: jsd_liger(hidden, weight, extra["th"], extra["tw"])),
    }
    for key, fn in fns.items():
        try:
            row[f"{key}_fwd_bwd_s"] = _cuda_time(fn, reps)
            row[f"{key}_peak_extra_mb"] = _cuda_mem(fn)
        except torch.cuda.OutOfMemoryError:
            row[f"{key}_error"] = "out of memory"
            torch.cuda.empty_cache()
    return row


def run_cuda(args) -> dict:
    import torch

    try:
        import liger_kernel  # noqa: F401
    except ImportError as e:
        sys.exit(f"--device cuda compares with Liger-Kernel, which is not importable ({e}); "
                 "install its wheel (pip install liger-kernel --no-deps) and rerun")
    if not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    name = torch.cuda.get_device_name(0)
    peak = _gpu_peak(name, args.peak_tflops)
    shapes = [(n, h, v) for v in (32000, 151936) for h in (896, 2048, 4096) for n in (1024, 4096, 16384)]
    if args.grid == "headline":
        shapes = [(16384, 4096, 151936)]
    cases = []
    for n, h, v in shapes:
        row = _cuda_case(n, h, v, args.reps, peak)
        print(json.dumps(row), flush=True)
        cases.append(row)
        torch.cuda.empty_cache()
    return {"device": "cuda", "peak_bf16_tflops": peak, "cases": cases,
            "bf16_grad_error": bf16_grad_error(torch.device("cuda"))}


def bf16_grad_error(dev, n=1024, h=896, v=32000) -> dict:
    """Relative max error (vs the fp64 reference) of the JSD loss gradients, live teacher: triton and
    chunked in bf16 and fp32 (the fp32 triton figures are the compiled-kernel correctness check),
    and Liger's in bf16."""
    import torch

    from slimkit.kernels import LiveTeacher, linear_kl

    hidden, weight, extra = _make("kl", n, h, v, torch.float64, dev)
    out = {}

    def grads(dtype, backend):
        hh = hidden.detach().to(dtype).requires_grad_()
        ww = weight.detach().to(dtype).requires_grad_()
        t = LiveTeacher(extra["th"].to(dtype), extra["tw"].to(dtype))
        linear_kl(hh, ww, t, kind="jsd", beta=0.5, reduction="mean", backend=backend).loss.backward()
        return hh.grad.double(), ww.grad.double()

    def err(got, ref):
        return {k: float((g - r).abs().max() / r.abs().max()) for k, g, r in zip(("d_hidden", "d_weight"), got, ref, strict=True)}

    ref = grads(torch.float64, "reference")
    for backend in ("triton", "chunked"):
        for dtype in (torch.bfloat16, torch.float32):
            out[f"{backend}_{str(dtype).removeprefix('torch.')}"] = err(grads(dtype, backend), ref)
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD

        hh = hidden.detach().to(torch.bfloat16).requires_grad_()
        ww = weight.detach().to(torch.bfloat16).requires_grad_()
        LigerFusedLinearJSD(jsd_beta=0.5)(hh, ww, extra["th"].bfloat16(), extra["tw"].bfloat16()).backward()
        out["liger_bfloat16"] = err((hh.grad.double(), ww.grad.double()), ref)
    except Exception as e:  # noqa: BLE001 - report, don't hide, a failing comparison
        out["liger_bfloat16"] = {"error": repr(e)}
    return out


# ----------------------------------------------------------------------------------------------- report


ABOUT = {
    "cpu": "fp32, forward + backward. peak_extra = peak RSS during the call - RSS before (gradients "
           "included); workspace = peak RSS - RSS after (beyond inputs and outputs); see the docstring of "
           "benchmarks/kernels.py. variant = backend@fraction of rows selected; chunked:525 = chunked with "
           "SLIMKIT_KERNEL_CHUNK_ROWS=525. On a shared machine wall times are noisy; cpu_s (process CPU "
           "time, same thread count) is the steadier measure.",
    "cpu ratios": "linear_kl (live teacher, forward KL) at N=4096, H=512, V=32000; logprob_*: linear_logprob "
                  "at the same shape. rows50: half of the rows selected.",
    "cpu skipped": "Shapes of the grid not run on the CPU, and why.",
    "cuda": "bf16, one row per shape: triton logprob forward (TFLOP/s, fraction of the GPU's peak), and "
            "forward + backward time and peak extra memory of triton vs Liger-Kernel (cross entropy, JSD).",
    "cuda gradient error": "Relative max error of the JSD gradients vs the fp64 reference, N=1024, H=896, V=32000.",
}


def tables(report: dict) -> dict[str, tuple[list[dict], tuple[str, ...]]]:
    """The report as the record's tables: name -> (rows, key)."""
    shape = ("op", "n", "h", "v", "variant")
    if report["device"] == "cuda":
        return {"cuda": (report["cases"], ("n", "h", "v")),
                "cuda gradient error": ([{"variant": k, **e} for k, e in report["bf16_grad_error"].items()],
                                        ("variant",))}
    measured, skipped = [], []
    for c in report["cases"]:
        where = {k: c[k] for k in ("op", "n", "h", "v")}
        for k, r in c["results"].items():
            measured.append({**where, "variant": k, "wall_s": r["time_s"], "cpu_s": r["cpu_s"],
                             "peak_extra_mib": r["peak_extra_mb"], "workspace_mib": r["workspace_mb"],
                             "wall_s_reps": r["times_s"], "cpu_s_reps": r["cpu_times_s"]})
        skipped += [{**where, "variant": k, "reason": why} for k, why in c["skipped"].items()]
        if "error" in c:
            measured.append({**where, "variant": "error", "error": c["error"]})
    ratios = [{"ratio": k, "value": v} for k, v in report["ratios"].items()]
    return {"cpu": (measured, shape), "cpu ratios": (ratios, ("ratio",)), "cpu skipped": (skipped, shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--grid", choices=("headline", "full"), default="full",
                    help="headline: only the headline shape (CPU: N=4096, H=512, V=32000; GPU: N=16384, H=4096, "
                         "V=151936)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak (default: by name)")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default: the record)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    sys.path.insert(0, str(ROOT))
    from _common import RESULTS, save

    report = run_cpu(args) if args.device == "cpu" else run_cuda(args)
    settings = ({"threads": args.threads, "dtype": "float32"} if args.device == "cpu"
                else {"dtype": "bfloat16", "peak_bf16_tflops": report["peak_bf16_tflops"]})
    for name, (rows, key) in tables(report).items():
        save("kernels", name, rows, key=key, about=ABOUT[name], settings={**settings, "reps": args.reps},
             show=name != "cpu skipped", out=args.out or RESULTS)
    print(json.dumps(report.get("ratios", {}), indent=1))


if __name__ == "__main__":
    main()
