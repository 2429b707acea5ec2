"""What only the course needs, kept apart from the core a reader copies.

The modules one level up (``model.py``, ``tokenizer.py``, ``data.py``, ``train.py``, ...) are
a GPT library you can lift into a project of your own. This subpackage holds what exists
only because the course is a set of notebooks measured on real hardware:

- ``quick``: ``is_quick`` / ``quick_or``, the small budgets the notebooks run with in CI
  (``NANOGPT_QUICK=1``);
- ``notebook``: ``show_source``, how a chapter shows the package's code beside its text, and
  ``glue``, how a figure it computes reaches its prose;
- ``results``: the measured records behind the book's results page (``write_result``,
  ``load_results``, and ``shown_path``, how a chapter prints a path without the machine's
  absolute one), with the course's own records shipped in ``records/`` as package data,
  so a chapter copied alone (as in Colab) still finds them;
- ``ddp_demo``: the two-process DDP run chapter 07 starts (``python -m nanogpt.course.ddp_demo``).

Nothing in the core imports from here at module level.
"""
from .notebook import glue, show_source
from .quick import is_quick, quick_or
from .results import load_results, records_dir, results_dir, shown_path, write_result

__all__ = ["is_quick", "quick_or", "show_source", "glue", "write_result", "load_results", "results_dir", "records_dir",
           "shown_path"]
