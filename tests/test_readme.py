"""The README's code examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert _python_blocks()


def test_readme_examples_run():
    for block in _python_blocks():
        exec(compile(block, str(README), "exec"), {})
