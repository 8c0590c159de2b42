"""The `slimkit` command: one subcommand per stage. Heavy imports happen inside each command so that
`slimkit --help` is instant. User errors (SlimkitError) print one line and exit with status 2."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from slimkit.compress.context.cli import app as context_app
from slimkit.errors import SlimkitError
from slimkit.serve.cli import serve_cmd

app = typer.Typer(
    name="slimkit",
    help="Make large language models small and fast, and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console(stderr=True)


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="Model directory (config.json + safetensors + tokenizer)."),
    task: str = typer.Option(..., "--task", "-t", help="arith | jobs"),
    split: str | None = typer.Option(None, help="train | validation | test (default test; not with --data)."),
    n: int | None = typer.Option(None, "--n", min=1, help="Evaluate the first N examples of the split."),
    k: int | None = typer.Option(None, "--k", min=1, help="arith: also sample K answers per problem and report pass@K."),
    temperature: float | None = typer.Option(None, min=0.0, help="arith, with --k: sampling temperature (default 1.0)."),
    batch_size: int = typer.Option(64, min=1, help="Rows per generation batch."),
    data: str | None = typer.Option(None, help="JSONL file of your own examples (prompt, answer, meta)."),
    out: str | None = typer.Option(None, "--out", "-o", help="Write the metrics as JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier slimkit eval result at --out."),
) -> None:
    """Evaluate a model on a task: arith accuracy per level, pass@k and answer length; jobs AUC and accuracy.

    Examples:

        slimkit eval toy:teacher --task arith --n 200

        slimkit eval runs/student --task arith --k 4 --out results.json

        slimkit eval runs/student --task jobs --data my_jobs.jsonl
    """
    from slimkit.tasks.eval import eval_model_dir

    eval_model_dir(model, task, split=split, n=n, k=k, temperature=temperature, batch_size=batch_size,
                   data=data, out=out, overwrite=overwrite, console=Console())


toy_app = typer.Typer(help="The embedded toy world: a tokenizer, a teacher and a student, shipped with slimkit.",
                      no_args_is_help=True)
app.add_typer(toy_app, name="toy")


@toy_app.command("build")
def toy_build_cmd(
    out: str | None = typer.Option(None, "--out", help="Directory (default ~/.cache/slimkit/toy-v4, or $SLIMKIT_HOME/toy-v4)."),
    seed: int = typer.Option(0, "--seed", help="Teacher seed (the student uses seed + 1)."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="torch threads per training process (default: 1 with several)."),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="data-parallel training processes (default: one per core, up to 2)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier toy build in --out."),
) -> None:
    """Rebuild the toy world from nothing (tokenizer, teacher, student) with fixed seeds.

    The shipped world (`slimkit toy path`) is what recipes, tests and benchmarks use; a rebuild is
    for checking that the build lands in the same place on your machine.

    Examples:

        slimkit toy build

        slimkit toy build --out /tmp/toy --seed 1

        slimkit toy build --out /tmp/toy-1 --workers 1 --threads 1     # one process, one thread

        SLIMKIT_TOY_STEPS_SCALE=0.05 slimkit toy build --out /tmp/quick   # a tiny smoke build
    """
    from pathlib import Path

    from slimkit import toy
    from slimkit.toy.build import build

    root = Path(out).expanduser() if out is not None else toy.rebuild_dir()
    if root.resolve() == toy.shipped_dir().resolve():
        raise SlimkitError(f"{root} is the shipped toy world: rebuild into another directory (--out)")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if not (root / "toy.json").is_file():
            raise SlimkitError(f"{root} exists and is not a toy world that slimkit built: "
                               "choose an empty or new directory with --out")
        if not force:
            raise SlimkitError(f"a toy world is already built at {root}: use --force to replace it")
    build(root, seed=seed, threads=threads, workers=workers, overwrite=force)


@toy_app.command("report")
def toy_report_cmd(
    path: str | None = typer.Option(None, "--dir", help="Toy world directory (default: the shipped one)."),
) -> None:
    """Print the teacher's and the student's eval tables (computed and cached if missing).

    Examples:

        slimkit toy report

        slimkit toy report --dir ~/.cache/slimkit/toy-v4
    """
    from slimkit import toy
    from slimkit.toy.report import report

    report(toy.shipped_dir() if path is None else path, console=Console())


@toy_app.command("path")
def toy_path_cmd(
    model: str | None = typer.Argument(None, help="teacher | student (default: the world's directory)."),
) -> None:
    """Print where the shipped toy world (or one of its models) is.

    Examples:

        slimkit toy path

        slimkit eval "$(slimkit toy path teacher)" --task jobs     # same as: slimkit eval toy:teacher ...
    """
    from slimkit import toy

    print(toy.shipped_dir() if model is None else toy.resolve(toy.PREFIX + model))


@app.command("distill")
def distill_cmd(
    recipe: str = typer.Argument(..., help="distillation recipe (YAML), e.g. recipes/opd_toy.yaml"),
    set_: list[str] = typer.Option(None, "--set", help="override a recipe key: --set select.ratio=0.5"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run's latest checkpoint"),
    overwrite: bool = typer.Option(False, "--overwrite", help="start over in a run directory that holds a run"),
) -> None:
    """Distill a teacher into a student (on-policy / off-policy KD, token selection).

    Examples:

        slimkit distill recipes/opd_toy.yaml

        slimkit distill recipes/opd_toy.yaml --set select.method=entropy_top --set select.ratio=0.5

        slimkit distill recipes/opd_toy.yaml --resume        # after a kill or SIGTERM

        slimkit distill recipes/opd_toy.yaml --overwrite     # start the run in `out` over

        torchrun --nproc-per-node 2 -m slimkit.cli distill recipes/opd_toy.yaml --set train.device=cpu
    """
    from slimkit.compress.distill import load_recipe, train

    cfg = load_recipe(recipe, set_ or [])
    result = train(cfg, resume=resume, overwrite=overwrite)
    if result["stopped"]:
        console.print(f"stopped at step {result['step']}; checkpoint {result['checkpoint']} "
                      "(continue with --resume)")
        sys.exit(143)
    console.print(f"student saved to {result['student']}: {result['metrics']}")


@app.command("quantize")
def quantize_cmd(
    model: str = typer.Argument(..., help="model directory (HF format), e.g. toy:teacher"),
    scheme: str = typer.Option(..., help="w8a8 | w4a16 | fp8 (llm-compressor, .venv-quant) | onnx-int8 | onnx-fp32 "
                                         "(optimum-onnx, .venv-onnx)"),
    out: str = typer.Option(..., "--out", "-o", help="output model directory"),
    calib: str = typer.Option("arith,jobs", help="calibration: tasks (train split, comma-separated) or a JSONL file"),
    n: int = typer.Option(256, "--n", min=1, help="calibration examples"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier slimkit output at --out"),
) -> None:
    """Quantize a model: llm-compressor schemes that vLLM serves, or ONNX Runtime int8 for CPUs.

    Examples:

        slimkit quantize toy:teacher --scheme w8a8 --out out/teacher-w8a8

        slimkit quantize toy:teacher --scheme onnx-int8 --out out/teacher-onnx-int8 --calib jobs

        slimkit serve out/teacher-onnx-int8 --engine onnxruntime
    """
    from slimkit.compress.quantize import SCHEMES, quantize

    path = quantize(model, scheme, out, calib=calib, n=n, overwrite=overwrite)
    console.print(f"{scheme} model saved to {path} (serve with {SCHEMES[scheme][2]})")


@app.command("prune")
def prune_cmd(
    model: str = typer.Argument(..., help="Parent model directory (Llama, Mistral, Qwen2 or Qwen3 layout)."),
    out: str = typer.Option(..., "--out", "-o", help="Directory for the pruned model."),
    target_params: float | None = typer.Option(None, "--target-params", help="Fraction of parameters to keep (0.6 keeps 60%)."),
    axes: str = typer.Option("width", help="What to prune: width, depth or width,depth."),
    hidden: int | None = typer.Option(None, "--hidden", help="Explicit hidden size."),
    mlp: int | None = typer.Option(None, "--mlp", help="Explicit MLP (intermediate) width."),
    kv_heads: int | None = typer.Option(None, "--kv-heads", help="Explicit KV heads (each keeps its query heads)."),
    heads: int | None = typer.Option(None, "--heads", help="Explicit query heads (a whole number of KV groups)."),
    layers: int | None = typer.Option(None, "--layers", help="Explicit number of layers."),
    multiple: int = typer.Option(32, "--multiple", help="Searched widths are multiples of this."),
    importance: str = typer.Option("activation", help="activation | random (the baseline)."),
    seed: int = typer.Option(0, help="Seed of --importance random."),
    calib: str = typer.Option("arith,jobs", help="Calibration tasks (their train splits)."),
    calib_data: str | None = typer.Option(None, "--calib-data", help="JSONL of calibration prompts instead."),
    calib_n: int = typer.Option(128, "--calib-n", min=1, help="Calibration examples per task (or rows)."),
    recover: str | None = typer.Option(None, "--recover", help="Distillation recipe: distill the pruned model from MODEL."),
    set_: list[str] = typer.Option(None, "--set", help="Override a key of the --recover recipe."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace slimkit's earlier output at --out (and the recovery run)."),
) -> None:
    """Structured pruning (width: MLP neurons, KV groups, hidden channels; depth: layers) to a smaller
    model of the same architecture, optionally recovered by distillation from the parent.

    Examples:

        slimkit prune toy:teacher --out runs/pruned --target-params 0.6

        slimkit prune toy:teacher --out runs/pruned --axes width,depth --target-params 0.6

        slimkit prune toy:teacher --out runs/pruned --hidden 96 --mlp 352 --layers 3

        slimkit prune toy:teacher --out runs/pruned --target-params 0.6 --recover recipes/prune_recover_toy.yaml
    """
    from slimkit.compress.prune import prune

    info = prune(model, out, keep=target_params, axes={a.strip() for a in axes.split(",") if a.strip()},
                 hidden=hidden, mlp=mlp, kv_heads=kv_heads, heads=heads, layers=layers, multiple=multiple,
                 importance=importance, seed=seed, calib=[c.strip() for c in calib.split(",") if c.strip()],
                 calib_data=calib_data, calib_n=calib_n, recover=recover, recover_set=set_ or [],
                 overwrite=overwrite)
    p = info["params"]
    console.print(f"pruned model saved to {info['out']}: {p['pruned']:,} of {p['parent']:,} parameters "
                  f"({p['kept_fraction']:.1%}), shape {info['shape']['pruned']}")


@app.command("pipeline")
def pipeline_cmd(
    recipe: str = typer.Argument(..., help="pipeline recipe (YAML), e.g. recipes/toy.yaml"),
    out: str | None = typer.Option(None, "--out", "-o", help="run directory (default: the recipe's `out`)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate the recipe, paths and environments; no work"),
    set_: list[str] = typer.Option(None, "--set", help="override a recipe key: --set stages.prune.target_params=0.5"),
) -> None:
    """Run a recipe's stages in order (distill, prune, recover, quantize, context, serve), each with a
    quality gate; a rerun skips unchanged stages and resumes an interrupted one.

    Examples:

        slimkit pipeline recipes/toy.yaml --out runs/toy

        slimkit pipeline recipes/job-scorer.yaml --dry-run
    """
    from slimkit.pipeline import pipeline

    pipeline(recipe, out=out, dry_run=dry_run, overrides=set_ or [], console=console)


app.command("serve")(serve_cmd)
app.add_typer(context_app, name="compress-context")


@app.command("score")
def score_cmd(
    server: str = typer.Option("127.0.0.1:50051", help="scorer address host:port"),
    query: str = typer.Option(..., help="the query every item is scored against"),
    items: str = typer.Option(..., help="file with one item per line ('-' for stdin; .jsonl: {\"item\": ...})"),
    labels: str = typer.Option(None, help="comma-separated single-token labels (default: yes,no)"),
    normalization: str = typer.Option("labels", help="labels | vocab | logit_diff"),
    item_first: bool = typer.Option(False, "--item-first", help="put the item before the query"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    timeout: float = typer.Option(60.0, min=0.001, help="deadline in seconds"),
) -> None:
    """Score items against a query on a running scorer; print a table (or JSON).

    Examples:

        slimkit score --query "python developer in berlin" --items postings.txt

        slimkit score --server 127.0.0.1:50052 --query "nurse" --items postings.jsonl --json

        slimkit score --query "nurse" --items - --normalization logit_diff < postings.txt
    """
    import json

    from rich.table import Table

    from slimkit.serve.client import ScorerClient, read_items

    texts = read_items(items)
    with ScorerClient(server, timeout=timeout) as client:
        res = client.score(query, texts, labels=labels.split(",") if labels else None,
                           normalization=normalization, item_first=item_first)
    if as_json:
        print(json.dumps({"query": query, "normalization": normalization, "label_token_ids": res.label_token_ids,
                          "items": [{"item": t, "score": s, "label_logprobs": lp} for t, s, lp in
                                    zip(texts, res.scores, res.label_logprobs, strict=True)]}, indent=2))
        return
    table = Table(title=f"{query!r} ({normalization}; {res.engine_seconds * 1000:.0f} ms in the engine)")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("label log-probs", justify="right")
    table.add_column("item")
    for i in sorted(range(len(texts)), key=lambda i: -res.scores[i]):
        short = texts[i] if len(texts[i]) <= 70 else texts[i][:67] + "..."
        table.add_row(str(i), f"{res.scores[i]:.4f}", " ".join(f"{x:.3f}" for x in res.label_logprobs[i]),
                      short)
    Console().print(table)


def _error(message: str, code: int = 2) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main(command: typer.Typer = app) -> None:
    """Run the app (or `command`, e.g. `python -m slimkit.serve`'s); every user error (a SlimkitError, a
    bad option or argument) is one line on stderr."""
    from typer._click.exceptions import ClickException, UsageError  # typer vendors click

    try:
        code = command(standalone_mode=False)
    except SlimkitError as e:
        _error(str(e))
    except UsageError as e:
        where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        _error(e.format_message() + where, e.exit_code)
    except ClickException as e:
        _error(e.format_message(), e.exit_code)
    except typer.Abort:
        _error("aborted", 1)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
