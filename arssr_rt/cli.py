"""The ``arssr-rt`` command line: one Typer app, one module per command under commands/.

Errors a user can cause are ArssrError subclasses; they are printed as one line on stderr and
turned into a non-zero exit code here, at the edge, and nowhere else. Usage errors (unknown
option, missing argument, bad value) come from typer's click, which typer >= 0.29 vendors
(there is no ``click`` package in a core install): their classes are reached through typer's
own API only, so the same code works with a vendored or an installed click.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from .errors import ArssrError, printable

HELP = """\
Arbitrary-scale super-resolution of 3-D MR volumes (ArSSR), torch-free at run time.

Examples:

\b
  arssr-rt upsample t1.nii.gz --scale 2.5            # -> t1_x2.5.nii.gz
  arssr-rt upsample t1.nii.gz --scale 1,1,3 -o t1_sr.nii.gz
  arssr-rt upsample t1.nii.gz --voxel-size 0.5 --backend onnxruntime
  arssr-rt info t1.nii.gz --scale 2
  arssr-rt models
  arssr-rt evaluate hr.nii.gz --scale 2 --scale 4
"""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)

# each module defines register(app); a module that is not there yet is skipped
COMMAND_MODULES = (
    "upsample",
    "info",
    "models",
    "export",
    "engines",
    "batch",
    "qc",
    "train",
    "evaluate",
    "bench",
)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"arssr_rt.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"arssr_rt.commands.{name}":
                continue
            raise
        module.register(app)


def _version() -> str:
    """The installed distribution's version; the package's own when run from a source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("arssr-rt")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"arssr-rt {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
) -> None:
    pass  # only --version lives here; the app's help is HELP


_register_commands()

# typer.BadParameter is click's, vendored or not: its ClickException base is what usage errors share
CLICK_EXCEPTION: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage_error(exc: Exception) -> int:
    """Print a click usage error as one ``arssr-rt: error:`` line and return its exit code.

    ``arssr-rt`` alone (no_args_is_help) is a usage error whose message is the help text:
    that one is shown as it is.
    """
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", 2))
    message = " ".join(str(exc.format_message()).split()).rstrip(".")  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None and getattr(ctx, "command_path", None) else ""
    print(f"arssr-rt: error: {message}{where}", file=sys.stderr)
    return int(getattr(exc, "exit_code", 2))


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app, map ArssrError to a one-line message + exit code."""
    try:
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int):  # typer.Exit(code) comes back as the return value here
            return rv
    except ArssrError as exc:
        print(f"arssr-rt: error: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("arssr-rt: interrupted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    except MemoryError:
        print("arssr-rt: error: out of memory; lower --max-memory or pass a smaller --tile", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permissions, vanished files: what and where, no traceback
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"arssr-rt: error: {printable(f'{exc.strerror or exc}{where}')}", file=sys.stderr)
        return 1
    except CLICK_EXCEPTION as exc:
        return _usage_error(exc)
    except typer.Abort:
        return 1
    except Exception as exc:
        if os.environ.get("ARSSR_RT_DEBUG"):
            raise
        print(f"arssr-rt: internal error: {type(exc).__name__}: {exc}; please report it "
              "(ARSSR_RT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
