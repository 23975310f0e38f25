"""The project's `kedro run`: Kedro's own command and options, with answers instead of tracebacks.

Kedro lets a project's ``cli.py`` replace its built-in commands. This ``run`` runs a session as
Kedro's does, and changes what a newcomer meets in the first hour:

* ``--pipeline NAME`` (what the docs and the Makefile write) works beside ``--pipelines A,B``,
  without Kedro's deprecation warning.
* An environment or pipeline that does not exist is named, with the ones that do, before
  anything starts (Kedro would fail in MLflow's "filesystem tracking backend" traceback).
* An error with the project's own message (one of its error types, or a ``ValueError`` or
  ``OSError`` its code raised, also when Kedro's catalog wraps it) or a file the system refused
  to write is one line; its traceback goes to ``logs/last_error.log`` (``--verbose`` prints
  it). Any other exception is a bug, and keeps its traceback.
* A pipeline started before what it reads exists names the pipeline that writes all of it.
"""

from __future__ import annotations

import difflib
import errno
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
from kedro.framework.cli.project import _resolve_runner_kwargs
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.project import pipelines as registered_pipelines
from kedro.framework.project import settings
from kedro.framework.session import KedroSession
from kedro.pipeline import Pipeline
from kedro.utils import load_obj

from aavae.config import ConfigError
from aavae.kedro_ext.datasets import MissingArtifact
from aavae.kedro_ext.pretrain_lock import PretrainLocked

DEFAULT_ENV = "local"  # settings.CONFIG_LOADER_ARGS["default_run_env"]
#: Where the traceback of an error reported in one line goes, under the project folder.
ERROR_LOG = Path("logs") / "last_error.log"
#: Why the system refuses to write a file: the user's disk or folders, not a bug of the project.
REFUSED_WRITES = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                  errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
_PACKAGE = Path(__file__).resolve().parent


@click.group(name="aavae")
def cli() -> None:
    """Project commands (they replace Kedro's built-in commands of the same name)."""


def run(
    pipeline: str | None, pipelines: list[str], runner: str | None, is_async: bool,
    runner_params: dict[str, Any], env: str | None, conf_source: str | None,
    params: dict[str, Any], verbose: bool = False, **filters: Any,
) -> dict[str, Any]:
    """Run the pipeline (``--pipeline NAME`` or ``--pipelines A,B``; default: __default__)."""
    if pipeline and pipelines:
        raise click.UsageError("Give --pipeline or --pipelines, not both.")
    names = [pipeline] if pipeline else list(dict.fromkeys(pipelines))
    project_path = Path(getattr(click.get_current_context().obj, "project_path", None) or Path.cwd())
    _check_environment(env or os.environ.get("KEDRO_ENV") or DEFAULT_ENV, conf_source, project_path)
    _check_pipelines(names)

    runner_class = load_obj(runner or "SequentialRunner", "kedro.runner")
    run_kwargs = {
        "tags": tuple(filters.pop("tags")),
        "node_names": tuple(filters.pop("node_names")),
        "runner": runner_class(**_resolve_runner_kwargs(is_async, runner_params)),
        "pipeline_names": names,
        **{key: filters[key] for key in ("from_nodes", "to_nodes", "from_inputs", "to_outputs",
                                         "load_versions", "namespaces", "only_missing_outputs")},
    }
    create_kwargs: dict[str, Any] = {"env": env, "conf_source": conf_source}
    if issubclass(settings.SESSION_CLASS, KedroSession):  # as Kedro's run does
        create_kwargs["runtime_params"] = params
    else:
        run_kwargs["runtime_params"] = params
    runner_log = logging.getLogger(runner_class.__module__)  # where Kedro says "No nodes ran"
    runner_log.addFilter(_no_repeat_advice_for_refusals)
    try:
        with settings.SESSION_CLASS.create(**create_kwargs) as session:
            return session.run(**run_kwargs)
    except (ConfigError, PretrainLocked) as error:
        raise click.ClickException(str(error)) from None
    except Exception as error:
        missing = _cause(error, MissingArtifact)
        if missing is not None and not verbose:
            filtered = any(run_kwargs[key] for key in ("tags", "node_names", "from_nodes", "to_nodes",
                                                       "from_inputs", "to_outputs", "namespaces"))
            first = None if filtered else prerequisite(names or ["__default__"])
            raise click.ClickException(str(missing) if first is None else (
                f"'{missing.filepath}' does not exist yet: run `kedro run --pipeline {first}"
                f"{f' --env {env}' if env else ''}` first (it writes what this run reads).")) from None
        if verbose or not (project_error(error) or refused_file(error)):
            raise
        _one_line_error(error, project_path, None if project_error(error) else refused_file(error))
    finally:
        runner_log.removeFilter(_no_repeat_advice_for_refusals)


def _no_repeat_advice_for_refusals(record: logging.LogRecord) -> bool:
    """Kedro's "No nodes ran. Repeat the previous command to attempt a new run." is false for a
    refusal, which the same command meets again; Kedro logs it while handling the error."""
    error = sys.exc_info()[1]
    return not (error is not None and record.getMessage().startswith("No nodes ran")
                and (project_error(error) or refused_file(error) is not None))


def _causes(error: BaseException | None, context: bool = False) -> Iterator[BaseException]:
    """``error`` and what it was raised from (Kedro's catalog wraps), or while handling."""
    while error is not None:
        yield error
        error = error.__cause__ or (error.__context__ if context else None)


def _cause(error: BaseException | None, kind: type[BaseException]) -> Any:
    return next((seen for seen in _causes(error) if isinstance(seen, kind)), None)


def prerequisite(names: list[str]) -> str | None:
    """The smallest registered pipeline that starts from the raw data and writes every artifact
    the named pipelines read from another pipeline (``pretrain`` for ``evaluate``), or None."""
    wanted = sum((registered_pipelines[name] for name in names), Pipeline([]))
    written = set().union(*(p.all_outputs() for p in registered_pipelines.values()))
    needed = wanted.inputs() & written
    fits = [(len(p.nodes), name) for name, p in registered_pipelines.items()
            if needed <= p.all_outputs() and not p.inputs() & written and not set(p.nodes) & set(wanted.nodes)]
    return min(fits)[1] if needed and fits else None


def project_error(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) carries this project's own message for the user:
    an error type of the project, or a ``ValueError``/``OSError`` its code raised."""
    return any(type(seen).__module__.split(".")[0] == _PACKAGE.name
               or isinstance(seen, (ValueError, OSError)) and _raised_in_project(seen) for seen in _causes(error))


def refused_file(error: BaseException) -> str | None:
    """The path and the cause, in one line, when ``error`` (or what it wraps, or what it was
    raised while handling) is the system refusing to write a file; else None."""
    for seen in _causes(error, context=True):
        if isinstance(seen, OSError) and seen.errno in REFUSED_WRITES and seen.filename is not None:
            path = Path(seen.filename)  # a writer's temporary (.<name>.tmp-*): its folder is what to fix
            advice = ("Free space on that disk" if seen.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                      else "Make it a folder you may write (data/ and its layers are written to)")
            return f"Cannot write '{path.parent if '.tmp-' in path.name else path}': {seen.strerror}. {advice}, then run the same command again."
    return None


def _raised_in_project(error: BaseException) -> bool:
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    return bool(frames) and Path(frames[-1].f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def _one_line_error(error: BaseException, project_path: Path, message: str | None = None) -> NoReturn:
    """Print the message (``error``'s own by default) only; keep the traceback in ``logs/last_error.log``."""
    log_file = project_path / ERROR_LOG
    try:
        log_file.parent.mkdir(exist_ok=True)
        log_file.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {' '.join(sys.argv)}\n\n"
                            + "".join(traceback.format_exception(error)))
        where = f"(The traceback is in {log_file}; run with --verbose to print it.)"
    except OSError:
        where = "(Run with --verbose to print the traceback.)"
    raise click.ClickException(f"{message or error}\n{where}") from None


def _check_environment(env: str, conf_source: str | None, project_path: Path) -> None:
    """Name the environment and list the real ones when ``conf/<env>`` does not exist."""
    conf = Path(conf_source) if conf_source else project_path / settings.CONF_SOURCE
    if not conf.is_dir() or (conf / env).is_dir():
        return  # a packaged (.zip/.tar.gz) or remote conf_source is Kedro's to check
    known = sorted(p.name for p in conf.iterdir() if p.is_dir() and not p.name.startswith("."))
    close = difflib.get_close_matches(env, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise click.ClickException(
        f"Environment '{env}' does not exist: there is no folder {conf / env}.{hint} "
        f"Environments of this project: {', '.join(known)}. Pass one with --env NAME, or "
        f"create {conf / env}/parameters.yml holding only what differs from conf/base."
    )


def _check_pipelines(names: list[str]) -> None:
    registered = sorted(registered_pipelines.keys())
    for name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise click.ClickException(
                f"There is no pipeline '{name}'.{hint} Registered pipelines: "
                f"{', '.join(registered)} (src/aavae/pipeline_registry.py)."
            )


# Kedro's own options, so `kedro run --help` and every flag stay Kedro's, and --verbose.
VERBOSE = click.Option(["--verbose", "-v"], is_flag=True,
                       help="Print the traceback of an error the project explains in one line.")
cli.add_command(click.Command(
    "run", params=[*kedro_run.params, VERBOSE], callback=run, help=run.__doc__,
    short_help="Run the pipeline.",
))
