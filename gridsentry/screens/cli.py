"""`gridsentry screens ...`: the monitoring-centre screens' commands."""

from __future__ import annotations

import typer

screens_app = typer.Typer(help="Monitoring-centre screens: metric catalogue.", no_args_is_help=True)


@screens_app.command("metrics-doc")
def metrics_doc() -> None:
    """Print the metric catalogue (docs/metrics.md) generated from the code that serves /metrics."""
    import logging

    from gridsentry.screens.catalogue import metrics_markdown

    logging.getLogger("gridsentry").setLevel(logging.ERROR)  # the short-lived service's start/stop lines
    typer.echo(metrics_markdown(), nl=False)
