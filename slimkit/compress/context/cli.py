"""The `compress-context` command (offline compression of a JSONL catalog) and its `train` subcommand
(the keep/drop classifier). Heavy imports happen when a command runs, so that `--help` is instant."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown",
                  invoke_without_command=True)


@app.callback()
def compress_cmd(
    ctx: typer.Context,
    input: str = typer.Option(None, "--input", "-i", help="JSONL of items: one JSON object per line"),
    out: str = typer.Option(None, "--out", "-o", help="JSONL to write: each row plus compressed, tokens_in, "
                            "tokens_out, ratio"),
    compressor: str = typer.Option("toy:student", help="a causal LM dir (surprisal), a trained classifier "
                                   "dir, or head | random (baselines; need --tokenizer)"),
    rate: float = typer.Option(None, help="fraction of tokens to keep, in (0, 1] (0.25 = 4x)"),
    budget: int = typer.Option(None, min=1, help="tokens to keep per item (instead of --rate)"),
    text_field: str = typer.Option("text", help="the field to compress"),
    query_field: str = typer.Option(None, help="a field holding each item's query (question-aware; its "
                                    "terms are protected)"),
    protect: list[str] = typer.Option(None, "--protect", help="a term never to drop (repeatable)"),
    protect_regex: list[str] = typer.Option(None, "--protect-regex", help="a regex whose matches are never "
                                            "dropped (repeatable)"),
    no_numbers: bool = typer.Option(False, "--no-protect-numbers", help="let words with digits be dropped"),
    tokenizer: str = typer.Option(None, help="with head | random: the model dir whose tokenizer counts tokens"),
    batch_size: int = typer.Option(64, min=1, help="items per batch"),
    ray: str = typer.Option(None, "--ray", help="run as a Ray Data job: local (start a local Ray) | auto | "
                            "host:port (the ray extra)"),
    ray_workers: int = typer.Option(1, min=1, help="with --ray: compressor actors"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier output of this command"),
) -> None:
    """Compress the items of a JSONL catalog to a token rate or budget, keeping protected spans.

    The output appears only when complete; rerun the same command after a kill to resume.

    Examples:

        slimkit compress-context -i postings.jsonl -o short.jsonl --rate 0.25

        slimkit compress-context -i postings.jsonl -o short.jsonl --rate 0.1 --compressor runs/ctx-clf --query-field query

        slimkit compress-context -i big.jsonl -o short.jsonl --rate 0.25 --ray auto --ray-workers 8

        slimkit compress-context train --teacher toy:teacher --out runs/ctx-clf
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from slimkit.compress.context import Protection
    from slimkit.compress.context.offline import compress_file
    from slimkit.errors import SlimkitError

    if input is None or out is None:
        raise SlimkitError("compress-context needs --input and --out (or a subcommand: train)")
    protection = Protection(numbers=not no_numbers, terms=tuple(protect or ()), patterns=tuple(protect_regex or ()))
    with Progress(TextColumn("compress"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        tid = bar.add_task("compress", total=None)
        res = compress_file(input, out, compressor, rate=rate, budget=budget, text_field=text_field,
                            query_field=query_field, protection=protection, tokenizer=tokenizer,
                            batch_size=batch_size, overwrite=overwrite, ray_address=ray, ray_workers=ray_workers,
                            progress=lambda done, total: bar.update(tid, completed=done, total=total))
    Console(stderr=True).print(f"{res['rows']} items -> {res['output']} (mean ratio {res['mean_ratio']:.3f}"
                               + (f"; resumed at row {res['resumed_at']}" if res["resumed_at"] else "") + ")")


@app.command("train")
def train_cmd(
    out: str = typer.Option(..., "--out", "-o", help="model directory to write"),
    teacher: str = typer.Option("toy:teacher", help="the model whose judgement labels the words"),
    n: int = typer.Option(200, min=2, help="jobs train postings to label, each with its own query and the queries "
                          "that match it, differ in its title, differ in its place (with --data: the file's pairs)"),
    data: str = typer.Option(None, help="JSONL of {\"query\", \"text\"} pairs instead of the jobs task; rows "
                             "that share a text label it together (give each item a positive and hard negatives)"),
    steps: int = typer.Option(400, min=1, help="training steps"),
    hidden: int = typer.Option(64, min=8, help="encoder width"),
    layers: int = typer.Option(2, min=1, help="encoder layers"),
    seed: int = typer.Option(0),
    labels: str = typer.Option("elimination", help="query-free labels: elimination (words ranked by how long "
                               "they survive backward elimination under the teacher) or leave-one-out (how far "
                               "leaving each word out moves the teacher's score)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier classifier at --out"),
) -> None:
    """Train the keep/drop token classifier from a teacher's scores with words left out.

    Examples:

        slimkit compress-context train --out runs/ctx-clf

        slimkit compress-context train --teacher runs/teacher --data pairs.jsonl --out runs/ctx-clf --steps 800
    """
    from rich.console import Console

    from slimkit.compress.context.train import train_classifier

    metrics = train_classifier(teacher, out, n=n, data=data, steps=steps,
                               hidden=hidden, layers=layers, seed=seed, labels=labels,
                               overwrite=overwrite)
    Console(stderr=True).print(f"classifier saved to {out}: {metrics}")


@app.command("adapt")
def adapt_cmd(
    model: str = typer.Argument(..., help="the scorer to adapt (a causal LM dir, e.g. toy:teacher)"),
    compressor: str = typer.Option(..., "--compressor", help="the compressor that will serve: a classifier or "
                                   "causal LM dir, or head | random"),
    rate: float = typer.Option(..., help="the served rate (fraction of tokens kept, in (0, 1])"),
    out: str = typer.Option(..., "--out", "-o", help="model directory to write"),
    rates: list[float] = typer.Option(None, "--rates", help="rates to train on (repeatable; default 1, 0.5, "
                                      "0.25, 0.1; the served rate is always in)"),
    n: int = typer.Option(2000, min=2, help="jobs train items (with --data: the file's)"),
    data: str = typer.Option(None, help="JSONL of {\"query\", \"text\"[, \"label\"]} rows instead of the jobs "
                             "task; the last --n-check labelled rows are held out for the check"),
    steps: int = typer.Option(400, min=1, help="training steps"),
    batch_size: int = typer.Option(32, min=1, help="items per step"),
    lr: float = typer.Option(1e-3, help="peak learning rate"),
    n_check: int = typer.Option(200, min=0, help="held-out items for the AUC check before and after"),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier output at --out"),
) -> None:
    """Adapt a scorer to compressed items: the model reading compressed items learns the label
    distribution that the frozen original gives on the full items (KL on the label tokens).

    Examples:

        slimkit compress-context adapt toy:teacher --compressor runs/ctx-clf --rate 0.25 --out runs/scorer-c4

        slimkit serve runs/scorer-c4 --compress-items 0.25 --compressor runs/ctx-clf
    """
    from rich.console import Console

    from slimkit.compress.context.adapt import adapt_scorer

    metrics = adapt_scorer(model, out, compressor=compressor, rate=rate, rates=rates, n=n, data=data, steps=steps,
                           batch_size=batch_size, lr=lr, n_check=n_check, seed=seed, overwrite=overwrite)
    Console(stderr=True).print(f"adapted scorer saved to {out}: {metrics}")
