"""The README's Python example runs as printed (shortened: fewer steps and problems).

Also the helpers the README tests share: the README's text and sections, and the benchmark script
that runs the README's examples (``benchmarks/readme_examples.py``), which reads the code blocks.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from helpers import one_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the benchmarks folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme_examples = benchmark_script("readme_examples")


def readme_section(heading: str) -> str:
    """The README's text from the line ``heading`` to the next heading of the same level."""
    level = heading.split(" ", 1)[0]
    text = README.read_text().split(heading + "\n", 1)[1]
    return re.split(rf"^{level} ", text, maxsplit=1, flags=re.MULTILINE)[0]


def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = readme_examples.readme_code("## From Python or a notebook")
    shrunk = code.replace("max_steps=40", "max_steps=2").replace('"train_size": 2000', '"train_size": 64')
    shrunk = shrunk.replace('"val_size": 100', '"val_size": 8').replace("batch_size=16", "batch_size=4")
    assert shrunk.count("max_steps=2,") == 1 and '"val_size": 8' in shrunk  # the edits found their targets
    monkeypatch.chdir(tmp_path)
    exec(compile(shrunk, "README.md", "exec"), {"__name__": "readme"})
    printed = re.search(
        r"greedy accuracy on 100 held-out problems: (\d\.\d\d) -> (\d\.\d\d)", capsys.readouterr().out
    )
    assert printed is not None
    assert (tmp_path / "my-policy" / "config.json").is_file() and (
        tmp_path / "my-policy" / "README.md"
    ).is_file()


def test_readme_section_stops_at_the_next_heading_of_its_level():
    quickstart = readme_section("## Quickstart (CPU)")
    assert "configs/quickstart.yaml" in quickstart and "## Tests" not in quickstart
    assert "### Several nodes" in readme_section("## Real models on GPUs")
