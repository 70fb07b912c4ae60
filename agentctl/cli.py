"""The command line. One short function per command; the work lives elsewhere.

This is the one place that maps errors to exit codes (DESIGN.md section 5):

    0    success
    1    the run ended with failed, blocked, skipped or cancelled tasks
    2    bad usage or invalid definitions
    3    the run is held by another live process, or its state cannot be used
    4    the run waits for a person (paused for approval/review, or out of budget)
    130  interrupted (resumable)

Messages go to stderr, data to stdout. Heavy modules are imported inside the commands, so
``--help`` and ``status`` stay fast and never import litellm.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from agentctl.errors import AgentctlError, DefinitionError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    pretty_exceptions_enable=False,
    help="Run pipelines of AI agents defined in plain files, and never lose work.",
)

EXIT_BY_STATUS = {
    "complete": 0, "failed": 1, "cancelled": 1, "paused": 4, "budget_exceeded": 4,
    "interrupted": 130,
}

StateDirOpt = Annotated[
    Path, typer.Option("--state-dir", envvar="AGENTCTL_STATE_DIR",
                       help="Where runs live (default ./state).")
]


def _err(message: str) -> None:
    from agentctl import redact  # light; every message to the user passes the secrets net

    sys.stderr.write(redact.default().text(message.rstrip("\n")) + "\n")


def _fail(e: AgentctlError) -> NoReturn:
    if isinstance(e, DefinitionError):
        errors = [d for d in e.diagnostics if d.severity == "error"]
        for d in e.diagnostics:
            _err(str(d))
        _err(f"{len(errors)} error(s)")
    else:
        _err(f"agentctl: error: {e}")
    raise typer.Exit(e.exit_code)


def _console() -> Any:
    """A terminal's own width; 140 columns into a pipe or file, where 80 would fold tables."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() or os.environ.get("COLUMNS") else Console(width=140)


def _state_dir(path: Path) -> Any:
    from agentctl.store import StateDir

    return StateDir(path)


def _parse_inputs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            from agentctl.errors import UsageError

            raise UsageError(f"-i expects KEY=VALUE, got '{p}'")
        out[key] = value
    return out


def _reporter(state_dir: Path | None = None) -> Any:
    if sys.stdout.isatty() and not os.environ.get("AGENTCTL_PLAIN"):
        from rich.console import Console

        from agentctl.render import LiveReporter

        return LiveReporter(Console(), _state_dir(state_dir) if state_dir else None)
    from agentctl.lines import LineReporter

    return LineReporter()


def _registry() -> Any:
    from agentctl.runners.base import Registry

    return Registry()


def _finish_run(outcome: Any) -> NoReturn:
    for note in outcome.notes:
        _err(f"agentctl: {note}")
    code = EXIT_BY_STATUS.get(outcome.status, 1)
    if outcome.status == "interrupted":
        _err(f"agentctl: interrupted; continue with `agentctl resume {outcome.run_id}`")
    elif outcome.status in ("paused", "budget_exceeded"):
        _err(f"agentctl: run {outcome.run_id} is {outcome.status}; see `agentctl status "
             f"{outcome.run_id}`")
    raise typer.Exit(code)


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file (YAML).")],
    input_: Annotated[list[str], typer.Option("--input", "-i", help="KEY=VALUE, repeatable.")] = [],  # noqa: B006
    run_id: Annotated[str | None, typer.Option("--run-id", help="Name the run.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model for llm tasks that name none.")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Tasks at once.")] = None,
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Start a run: live progress on a terminal, plain lines otherwise."""
    from agentctl import engine

    try:
        registry = _registry()
        reporter = _reporter(state_dir)
        preflight = _preflight()
        with _maybe_live(reporter):
            outcome = engine.start(pipeline, _state_dir(state_dir), inputs=_parse_inputs(input_),
                                   run_id=run_id, model=model, concurrency=concurrency,
                                   registry=registry, reporter=reporter, preflight=preflight)
    except AgentctlError as e:
        _fail(e)
    _finish_run(outcome)


def _preflight() -> Any:
    try:
        from agentctl.runners.llm import preflight
    except ImportError:
        return None
    return preflight


class _NoLive:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _maybe_live(reporter: Any) -> Any:
    return reporter if hasattr(reporter, "__enter__") else _NoLive()


@app.command()
def resume(
    run_id: Annotated[str | None, typer.Argument(help="The run (default: the newest).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run failed, blocked and skipped tasks again.")] = False,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1)] = None,
    budget_usd: Annotated[float | None, typer.Option("--budget-usd", min=0, help="Raise the run's budget in USD.")] = None,
    budget_tokens: Annotated[int | None, typer.Option("--budget-tokens", min=0, help="Raise the run's token budget.")] = None,
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Continue a run that crashed, was interrupted, paused or ran out of budget."""
    from agentctl import engine

    budget: dict[str, Any] = {}
    if budget_usd is not None:
        budget["budget_usd"] = budget_usd
    if budget_tokens is not None:
        budget["budget_tokens"] = budget_tokens
    try:
        reporter = _reporter(state_dir)
        with _maybe_live(reporter):
            outcome = engine.resume(_state_dir(state_dir), run_id, registry=_registry(),
                                    reporter=reporter, retry_failed=retry_failed,
                                    concurrency=concurrency, budget=budget or None)
    except AgentctlError as e:
        _fail(e)
    _finish_run(outcome)


@app.command()
def status(
    run_id: Annotated[str | None, typer.Argument(help="A run: its tasks, wave by wave.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second until the run ends.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object (a line per refresh with --watch).")] = False,
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """The runs in the state dir, or one run's tasks. Never takes the lock."""
    import json
    import time

    from agentctl import views

    sd = _state_dir(state_dir)

    def snapshot() -> dict[str, Any]:
        if run_id is None:
            return views.runs_json(sd)
        rd = sd.run(run_id)
        return views.run_json(rd, views.load(rd))

    try:
        data = snapshot()
        if as_json:
            print(json.dumps(data, ensure_ascii=False))
            while watch and data.get("status", "running") in ("running",):
                time.sleep(1.0)
                data = snapshot()
                print(json.dumps(data, ensure_ascii=False), flush=True)
            return
        from rich.live import Live

        from agentctl import render

        def view(d: dict[str, Any]) -> Any:
            if run_id is None:
                if not d["runs"]:
                    return f"no runs in {sd.runs}"
                return render.runs_table(d)
            return render.run_table(d)

        console = _console()
        if not watch:
            console.print(view(data))
            return
        with Live(view(data), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(1.0)
                data = snapshot()
                live.update(view(data))
                if run_id is not None and data["status"] != "running":
                    break
    except AgentctlError as e:
        _fail(e)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def validate(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file (YAML).")],
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Load and check a pipeline and its skills; print the waves."""

    from agentctl import engine, render
    from agentctl.definitions import load_pipeline

    del state_dir
    try:
        defn = load_pipeline(pipeline)
        engine.check_runners(defn, _registry())
    except AgentctlError as e:
        _fail(e)
    _console().print(render.waves_table(defn))
    for w in defn.warnings:
        _err(str(w))
    _err(f"{pipeline}: ok ({len(defn.pipeline.tasks)} tasks, {len(defn.warnings)} warning(s))")


def _request(state_dir: Path, run_id: str | None, req: dict[str, Any]) -> None:
    from agentctl import engine

    try:
        message = engine.request(_state_dir(state_dir), run_id, req)
    except AgentctlError as e:
        _fail(e)
    _err(f"agentctl: {message}")


@app.command()
def approve(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    task: Annotated[str, typer.Argument(help="The task waiting for approval.")],
    note: Annotated[str | None, typer.Option("--note", help="Why; kept in the WAL.")] = None,
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Approve a task that waits for a person (approval: required, or irreversible)."""
    _request(state_dir, run_id, {"action": "approve", "task": task, "note": note})


@app.command()
def reject(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    task: Annotated[str, typer.Argument(help="The task waiting for approval.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; its dependents are skipped with it.")],
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Reject a task that waits for approval; its dependents are skipped."""
    _request(state_dir, run_id, {"action": "reject", "task": task, "note": reason})


@app.command()
def complete(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    task: Annotated[str, typer.Argument(help="The task a person completes.")],
    output: Annotated[Path, typer.Option("--output", help="The report (JSON), validated like an agent's.")],
    note: Annotated[str | None, typer.Option("--note")] = None,
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Take a task over: supply its report instead of running it."""
    import json

    from agentctl.errors import UsageError

    try:
        report = json.loads(output.read_text(encoding="utf-8"))
    except FileNotFoundError:
        _fail(UsageError(f"{output}: no such file"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        _fail(UsageError(f"{output}: not a JSON report: {e}"))
    _request(state_dir, run_id, {"action": "complete", "task": task, "report": report, "note": note})


@app.command()
def retry(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    task: Annotated[str, typer.Argument(help="The task to queue again.")],
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Put one task back in the queue (and the tasks skipped because of it)."""
    _request(state_dir, run_id, {"action": "retry", "task": task})


@app.command()
def cancel(
    run_id: Annotated[str | None, typer.Argument(help="The run (default: the newest).")] = None,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Cancel a run: stop dispatching, stop running tasks; the run ends cancelled."""
    _request(state_dir, run_id, {"action": "cancel", "note": reason})


@app.command()
def logs(
    run_id: Annotated[str | None, typer.Argument(help="The run (default: the newest).")] = None,
    task: Annotated[str | None, typer.Argument(help="One task: its packet, prompt, model calls, output and report.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records until the run ends.")] = False,
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """A run's history from its WAL, or everything one task saw and returned. Never takes the lock."""
    from agentctl import logs as logs_

    try:
        logs_.command(_state_dir(state_dir), run_id, task, follow_=follow, out=sys.stdout, err=_err)
    except AgentctlError as e:
        _fail(e)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def trace(
    run_id: Annotated[str | None, typer.Argument(help="The run (default: the newest).")] = None,
    task: Annotated[str | None, typer.Argument(help="One task (default: every failing task and the cause of each skip).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """From a failed run to the cause: model, skill and prompt hashes, category, exact error."""
    from agentctl import trace as trace_

    try:
        trace_.command(_state_dir(state_dir), run_id, task, as_json=as_json, out=sys.stdout)
    except AgentctlError as e:
        _fail(e)


@app.command()
def report(
    run_id: Annotated[str | None, typer.Argument(help="The run (default: the newest).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write (default: the run's report.html).")] = None,
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Write one self-contained HTML file: the run's timeline, each task's packet and report."""
    from agentctl import report_html

    try:
        path = report_html.command(_state_dir(state_dir), run_id, output)
    except AgentctlError as e:
        _fail(e)
    except OSError as e:
        _err(f"agentctl: error: cannot write the report: {e}")
        raise typer.Exit(1) from None
    print(path)


def _usage_errors() -> tuple[type[Exception], ...]:
    """click's UsageError: typer carries its own copy of click (typer._click), older typer
    versions use click itself."""
    import importlib

    found: list[type[Exception]] = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(name).UsageError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def main() -> None:
    try:
        rv = app(standalone_mode=False)
    except _usage_errors() as e:  # bad options or arguments: one line, like every error
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.exit(2)  # the help was printed
        ctx = getattr(e, "ctx", None)
        where = f" (see 'agentctl {ctx.info_name} --help')" if ctx and ctx.parent else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        _err(f"agentctl: error: {message}{where}")
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _err("agentctl: interrupted")
        sys.exit(130)
    except OSError as e:  # the state dir is a file, unwritable, on a full disk...
        if os.environ.get("AGENTCTL_DEBUG"):
            raise
        what = f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e)
        _err(f"agentctl: error: {what}")
        sys.exit(3)
    except Exception as e:  # a bug of ours: one line, the traceback on request
        if os.environ.get("AGENTCTL_DEBUG"):
            raise
        _err(f"agentctl: internal error: {type(e).__name__}: {e} "
             "(set AGENTCTL_DEBUG=1 for the traceback)")
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
