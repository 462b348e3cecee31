"""Execute the notebooks headless, each in a fresh kernel; any error fails the run.

    python notebooks/execute.py                  every notebooks/*.ipynb, in name order
    python notebooks/execute.py 02 03-job-queue  only these (a file name, a prefix, or a path)

Each notebook runs in a new kernel of this very interpreter (ipykernel), with
notebooks/ as its working directory and a time limit per cell. The notebooks
themselves are never written to: the executed copies, outputs and all, go to
build/notebooks/. The exit status is 0 only if every cell of every notebook
ran without an error; for a failing cell, its source and its error are printed.

``nox -s notebooks`` runs this script.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from ipykernel.kernelspec import RESOURCES, get_kernel_dict
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "build" / "notebooks"
CELL_TIMEOUT = 120  # seconds per cell: a hung cell fails the run instead of stalling it
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # (tracebacks from the kernel come in colour)


class ThisInterpreter(KernelSpecManager):
    """Kernel specs that always name the interpreter running this script.

    A ``python3`` kernel spec installed for the user could point at another
    Python, one without trioactors.
    """

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())


def select(names: list[str]) -> list[Path]:
    """The notebooks to run: all of them, or those ``names`` pick (each must pick one)."""
    every = sorted(HERE.glob("*.ipynb"))
    if not names:
        return every
    chosen: list[Path] = []
    for name in names:
        stem = Path(name).name.removesuffix(".ipynb")
        found = [path for path in every if path.stem == stem] or [
            path for path in every if path.stem.startswith(stem)
        ]
        if len(found) != 1:
            known = ", ".join(path.name for path in every) or "none"
            what = "matches no notebook" if not found else "matches several notebooks"
            raise SystemExit(f"execute.py: {name!r} {what} (notebooks: {known})")
        chosen += [path for path in found if path not in chosen]
    return chosen


def kernel_class(sockets: Path) -> type[AsyncKernelManager]:
    """Kernels of this interpreter that talk over Unix sockets in ``sockets``.

    (No TCP port open to the machine; on Windows, TCP on 127.0.0.1.)
    """
    ipc = sys.platform != "win32"

    class Kernel(AsyncKernelManager):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(
                **kwargs,
                kernel_spec_manager=ThisInterpreter(),
                transport="ipc" if ipc else "tcp",
                ip=str(sockets / "kernel") if ipc else "127.0.0.1",
            )

    return Kernel


def execute(path: Path, sockets: Path) -> str | None:
    """Run one notebook (its kernel's sockets in a new directory in ``sockets``);
    return None if every cell ran, else what went wrong."""
    notebook = nbformat.read(path, as_version=4)
    (sockets / path.stem).mkdir()
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        kernel_manager_class=kernel_class(sockets / path.stem),
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(HERE)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        return ANSI.sub("", str(exc))
    except CellTimeoutError as exc:
        return f"a cell ran for more than {CELL_TIMEOUT} s: {ANSI.sub('', str(exc))}"
    except DeadKernelError as exc:
        return f"the kernel died: {exc}"
    except Exception as exc:  # (the kernel did not start, say)
        return f"{type(exc).__name__}: {exc}"
    finally:
        OUT.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, OUT / path.name)
    return None


def main(names: list[str]) -> int:
    notebooks = select(names)
    if not notebooks:
        print(f"execute.py: no notebooks in {HERE}")
        return 1
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="trioactors-kernels-") as sockets:
        for path in notebooks:
            print(f"{path.name} ...", flush=True)
            started = time.monotonic()
            error = execute(path, Path(sockets))
            elapsed = time.monotonic() - started
            status = "ok" if error is None else "FAILED"
            print(f"{path.name}: {status} in {elapsed:.1f} s", flush=True)
            if error is not None:
                print(error.rstrip() + "\n", flush=True)
                failed.append(path.name)
    ran = len(notebooks)
    if failed:
        print(f"{len(failed)} of {ran} notebooks failed: {', '.join(failed)}")
        print(f"(executed copies, with their outputs, are in {OUT})")
        return 1
    print(f"all {ran} notebooks ran without an error (executed copies in {OUT})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
