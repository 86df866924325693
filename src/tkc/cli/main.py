"""The `tkc` command: one module per verb; the runtime is imported only inside the verbs that train."""

from __future__ import annotations

import sys

import typer

from tkc.cli import catalog as catalog_cmd
from tkc.cli import chat as chat_cmd
from tkc.cli import compile as compile_cmd
from tkc.cli import diff as diff_cmd
from tkc.cli import explain as explain_cmd
from tkc.cli import run as run_cmd
from tkc.cli import verify as verify_cmd

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tkc: compile fine-tuning recipes into reproducible bundles, then run them.")
app.command("compile")(compile_cmd.compile_)
app.command("verify")(verify_cmd.verify)
app.command("diff")(diff_cmd.diff)
app.command("explain")(explain_cmd.explain)
app.command("schema")(explain_cmd.schema)
app.command("run")(run_cmd.run)
app.command("chat")(chat_cmd.chat)
app.add_typer(catalog_cmd.app, name="catalog", help="What the compiler knows: templates, families, profiles.")


def _data_app() -> None:
    try:
        from tkc.cli.data import app as data_app
    except ImportError:  # pragma: no cover - the data verbs ship with the data pipeline
        return
    app.add_typer(data_app, name="data", help="Inspect datasets as the runtime will see them.")


_data_app()


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
