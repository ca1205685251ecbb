"""The README's Python example runs as printed (shortened: fewer steps and problems)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from helpers import one_thread  # noqa: F401 (autouse fixture)

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def readme_example() -> str:
    text = Path(README).read_text().split("## From Python or a notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)


def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = readme_example()
    shrunk = code.replace("max_steps=40", "max_steps=2").replace('"train_size": 2000', '"train_size": 64')
    shrunk = shrunk.replace('"val_size": 100', '"val_size": 8').replace("batch_size=16", "batch_size=4")
    assert shrunk.count("max_steps=2,") == 1 and '"val_size": 8' in shrunk  # the edits found their targets
    monkeypatch.chdir(tmp_path)
    exec(compile(shrunk, "README.md", "exec"), {"__name__": "readme"})
    printed = re.search(r"greedy accuracy on 100 held-out problems: (\d\.\d\d) -> (\d\.\d\d)", capsys.readouterr().out)
    assert printed is not None
    assert (tmp_path / "my-policy" / "config.json").is_file() and (tmp_path / "my-policy" / "README.md").is_file()
