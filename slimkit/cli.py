"""The `slimkit` command: one subcommand per stage. Heavy imports happen inside each command so that
`slimkit --help` is instant. User errors (SlimkitError) print one line and exit with status 2."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from slimkit.errors import SlimkitError

app = typer.Typer(
    name="slimkit",
    help="Make large language models small and fast, and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console(stderr=True)


def main() -> None:
    try:
        app()
    except SlimkitError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
