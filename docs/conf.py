"""Sphinx configuration of crossent's site: ``nox -s docs`` builds it with warnings as errors
and runs every example (the doctest builder), so no example can rot."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("KERAS_BACKEND", "jax")  # the migration page runs Keras on JAX

import crossent  # noqa: E402

project = "crossent"
author = "the crossent developers"
copyright = "2026, the crossent developers"
version = release = crossent.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    # MathJax 3 copied into _static and served from there: the math renders with no network
    "sphinx-mathjax-offline",
    "numpydoc",
    "myst_parser",
    "sphinx_design",
    "matplotlib.sphinxext.plot_directive",
    "crossent_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_typehints = "none"  # numpydoc's Parameters section says it, once
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
# numpydoc checks every docstring; "all" with these codes means all checks but these: no
# extended summary needed (ES01), no See Also everywhere (SA01), and return types named
# "array" without a variable name (RT02, RT05 would ask for more)
numpydoc_validation_checks = {"all", "ES01", "SA01", "RT02"}

html_theme = "pydata_sphinx_theme"
html_title = f"crossent {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"**": []}

# Plots are drawn at build time from the code on the page.
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]
plot_rcparams = {"figure.figsize": (6.4, 3.6), "font.size": 9}

# Every example runs: the doctest builder executes the pages' doctest blocks and the
# docstrings' examples. CuPy's examples run only where CuPy sees a GPU.
doctest_global_setup = """
import numpy as np
import crossent
try:
    import cupy
    if cupy.cuda.runtime.getDeviceCount() < 1:
        cupy = None
except Exception:
    cupy = None
"""
doctest_test_doctest_blocks = "default"
trim_doctest_flags = True
