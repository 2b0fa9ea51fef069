"""The ``arssr-rt`` command line: one Typer app, one module per command under commands/.

Errors a user can cause are ArssrError subclasses; they are printed as one line on stderr and
turned into a non-zero exit code here, at the edge, and nowhere else.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from .errors import ArssrError

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


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app, map ArssrError to a one-line message + exit code."""
    try:
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int):  # typer.Exit(code) comes back as the return value here
            return rv
    except ArssrError as exc:
        print(f"arssr-rt: error: {exc}", file=sys.stderr)
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
        print(f"arssr-rt: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:  # click usage errors come as click.exceptions.*
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show(file=sys.stderr)
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 1
        if os.environ.get("ARSSR_RT_DEBUG"):
            raise
        print(f"arssr-rt: internal error: {type(exc).__name__}: {exc}; please report it "
              "(ARSSR_RT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
