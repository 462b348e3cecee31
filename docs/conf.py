"""Sphinx configuration: ``nox -s docs`` builds the site with warnings as errors.

The pages are Markdown (MyST); the API reference is generated from the
docstrings (autodoc), which use trio's ``Args:`` / ``Returns:`` / ``Raises:``
sections (napoleon, Google style).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

# Document the trioactors of this checkout, whatever else the venv holds.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sphinx.ext.napoleon.docstring import GoogleDocstring

import trioactors

if TYPE_CHECKING:
    from docutils.nodes import Element, TextElement, reference
    from sphinx.addnodes import pending_xref
    from sphinx.application import Sphinx
    from sphinx.environment import BuildEnvironment

project = "trioactors"
author = "the trioactors authors"
copyright = "the trioactors authors"
release = trioactors.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# -- Markdown pages (MyST) ---------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
# [text](page.md#a-heading) links resolve for headings of levels 1 to 3
myst_heading_anchors = 3

# -- API reference (autodoc, napoleon) ---------------------------------------------

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# Types in the signatures, one parameter per line once a signature is long.
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
python_maximum_signature_line_length = 88
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"

# -- HTML ----------------------------------------------------------------------------

html_theme = "furo"
html_title = f"trioactors {release}"
pygments_style = "friendly"
pygments_dark_style = "monokai"


# Napoleon reads the first line of an attribute's docstring as "type: text" when
# it has a colon ("Largest frame, in bytes (default: 1 MiB)" would get the type
# "Largest frame, in bytes (default"). Our attribute docstrings are sentences and
# their types come from the annotations, so the whole docstring is the text.
def _attribute_docstring(self: GoogleDocstring) -> list[str]:
    lines = self._dedent(self._consume_to_end())
    return GoogleDocstring(lines, self._config).lines()


GoogleDocstring._parse_attribute_docstring = _attribute_docstring  # type: ignore[method-assign]

# Public objects live in private modules (trioactors._runtime._actor.ActorRef)
# and are documented where users import them (trioactors.ActorRef,
# trioactors.transports.TransportConfig). Type hints and docstrings that name the
# private path, or a bare name documented in another public module, are
# pointed at the public object.
_PUBLIC_MODULES = ("trioactors", "trioactors.transports", "trioactors.testing")


def _resolve_private(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: TextElement
) -> reference | Element | None:
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if target.startswith("trioactors.") and "._" in target:
        name = target.rpartition(".")[2]  # trioactors._core._jobs.Job -> Job
        context = target
    elif target.isidentifier():
        name = target  # a bare name in a docstring of another module: :class:`NodeUnreachable`
        context = node.get("py:module") or ""
    else:
        return None
    # the public module the reference comes from first (trioactors.testing._plan.Restart
    # is trioactors.testing.Restart, not trioactors.Restart), the most specific first
    modules = sorted(
        _PUBLIC_MODULES,
        key=lambda module: (not f"{context}.".startswith(f"{module}."), -len(module)),
    )
    domain = env.get_domain("py")
    for module in modules:
        candidate = f"{module}.{name}"
        if candidate in domain.objects:  # type: ignore[attr-defined]
            node["reftarget"] = candidate
            return domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], candidate, node, contnode
            )
    return None


def setup(app: Sphinx) -> None:
    app.connect("missing-reference", _resolve_private)
