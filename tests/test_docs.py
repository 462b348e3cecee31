"""Every ```python block in README.md and docs/ is a complete program: run it.

And the API reference (docs/reference) documents every public name of
``trioactors`` exactly once.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import trioactors

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts),
]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def examples() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for i, match in enumerate(BLOCK.finditer(page.read_text())):
            found.append((f"{page.relative_to(ROOT)}#{i + 1}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "code"), examples(), ids=[w for w, _ in examples()])
def test_doc_example_runs(where: str, code: str) -> None:
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(code, where, "exec"), namespace)


REFERENCE = ROOT / "docs" / "reference"
DOCUMENTED = re.compile(
    r"^\.\. (?:auto(?:class|exception|function|data)|py:data|py:type)::\s+(?:trioactors\.)?(\w+)\s*$",
    re.MULTILINE,
)


def test_api_reference_documents_every_public_name_once() -> None:
    public = {
        name
        for name, obj in vars(trioactors).items()
        if not name.startswith("_")
        and not inspect.ismodule(obj)
        and name != "annotations"  # (its `from __future__ import annotations`)
    } | {"__version__"}
    documented: list[str] = []
    for page in sorted(REFERENCE.glob("*.rst")):
        text = page.read_text()
        if ".. automodule:: trioactors." not in text:  # (not a submodule's page)
            documented += DOCUMENTED.findall(text)
    twice = sorted({name for name in documented if documented.count(name) > 1})
    assert not twice, f"documented more than once in docs/reference: {twice}"
    assert sorted(public - set(documented)) == [], "missing from docs/reference"
    assert sorted(set(documented) - public) == [], "not public names of trioactors"
