"""The README's measured examples, run from the README's own code, with the conditions they ran under.

Each subcommand writes one JSON file under ``benchmarks/results/`` that the README quotes next to the
figure (``tests/test_readme_figures.py`` checks that the two agree):

    python benchmarks/readme_examples.py python-example --out benchmarks/results/readme-python-example.json
    python benchmarks/readme_examples.py evaluate-model --out benchmarks/results/readme-evaluate-model.json
    python benchmarks/readme_examples.py tiny-math --out benchmarks/results/readme-tiny-math.json

- ``python-example``: the code block of "From Python or a notebook", as printed (40 GRPO steps of the
  shipped tiny model), in a temporary folder; records what it prints and its process CPU time.
- ``evaluate-model``: the ``evaluate_model`` block of "Evaluation" up to ``before = ...`` (the
  ``after`` half needs a quickstart run); records the figures and the CPU time of that call.
- ``tiny-math``: the size of ``builtin:tiny-math`` (parameters, bytes of its folder) and the folder
  ``python -m grpo_lightning.hf.models builtin:tiny-math`` prints, relative to the package.

CPU time is the process's (all threads); ``--threads`` sets torch's intra-op threads (default 1,
as the README's figures were measured).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def readme_code(heading: str, contains: str = "") -> str:
    """The first ```python block after the README line ``heading`` whose code holds ``contains``."""
    text = README.read_text().split(heading + "\n", 1)[1]
    for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        if contains in block:
            return block
    raise ValueError(f"no python block holding {contains!r} after {heading!r} in {README}")


def uptime() -> str:
    """``uptime``'s line (the load averages), or the kernel's load averages where it is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def conditions() -> dict[str, Any]:
    """The machine and software a figure was measured on (the load is recorded around the run)."""
    import torch

    return {
        "machine": f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs "
        f"({len(os.sched_getaffinity(0))} usable)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def run_python_example() -> dict[str, Any]:
    """The README's Python example as printed: what it prints, and its CPU and wall time."""
    code = readme_code("## From Python or a notebook")
    printed = io.StringIO()
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(printed):
        os.chdir(folder)  # the example saves "my-policy" in the current folder
        try:
            cpu, wall = time.process_time(), time.perf_counter()
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            os.chdir(here)
    line = re.search(r"greedy accuracy on \d+ held-out problems: .*", printed.getvalue())
    if line is None:
        raise RuntimeError(f"the example printed no accuracy line:\n{printed.getvalue()}")
    return {"code": code, "printed": line.group(0), "cpu_s": round(cpu, 1), "wall_s": round(wall, 1)}


def evaluate_model_code() -> tuple[str, str]:
    """The README's ``evaluate_model`` example up to its ``before = ...`` line: (setup, that line)."""
    code = readme_code("## Evaluation", contains="evaluate_model(")
    setup, call = code.split("before = ", 1)
    return setup, "before = " + call.split("\n", 1)[0]


def run_evaluate_model() -> dict[str, Any]:
    """The README's ``evaluate_model`` example on ``builtin:tiny-math`` (its ``before`` figures)."""
    setup, call = evaluate_model_code()
    scope: dict[str, Any] = {"__name__": "readme"}
    exec(compile(setup, "README.md", "exec"), scope)
    cpu = time.process_time()
    exec(compile(call, "README.md", "exec"), scope)
    cpu = time.process_time() - cpu
    return {
        "code": setup + call,
        "figures": {k: round(v, 4) for k, v in scope["before"].items()},
        "cpu_s": round(cpu, 1),
    }


def run_tiny_math() -> dict[str, Any]:
    """Parameters and bytes of the shipped model, and the folder its module's command prints."""
    import grpo_lightning
    from grpo_lightning.hf.models import load_policy, resolve_model_path

    folder = Path(resolve_model_path("builtin:tiny-math"))
    printed = subprocess.run(
        [sys.executable, "-m", "grpo_lightning.hf.models", "builtin:tiny-math"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    package = Path(grpo_lightning.__file__).parent
    model = load_policy("builtin:tiny-math")
    return {
        "command_prints": str(Path(printed).relative_to(package.parent)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "folder_bytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()),
        "files": sorted(f.name for f in folder.iterdir() if f.is_file()),
    }


RUNS = {
    "python-example": run_python_example,
    "evaluate-model": run_evaluate_model,
    "tiny-math": run_tiny_math,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("example", choices=sorted(RUNS))
    parser.add_argument("--out", type=Path, help="JSON file to write (default: print only)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    load_before = uptime()
    result = RUNS[args.example]()
    record = {
        "command": "python benchmarks/readme_examples.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        **conditions(),
        "uptime_before": load_before,
        "uptime_after": uptime(),
        "result": result,
    }
    text = json.dumps(record, indent=2) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
    return record


if __name__ == "__main__":
    main()
