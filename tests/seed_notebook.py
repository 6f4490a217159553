"""The seed write-up's notebook code, run unmodified against the local server.

`tests/seed/notebook_cells.txt` holds the write-up's code cells verbatim (extracted by
`code_cells` from ../shared/seed/tinkering-with-tinker.txt; a test keeps the copy in step).
`run_cells` executes them with only these substitutions:
- `tinker.ServiceClient()` -> `tinker.ServiceClient(base_url=<server>)` (the key comes from the
  environment, as the notebook expects);
- the base model name and the step counts;
- `return_dict=False` in `apply_chat_template`: transformers 5 returns a BatchEncoding by
  default (the notebook ran on transformers 4); on Tinker the same change is needed.
- `plt.show()` does nothing (no display in tests).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "tinkering-with-tinker.txt"
CELLS = Path(__file__).resolve().parent / "seed" / "notebook_cells.txt"
SEPARATOR = "\n# ---- cell ----\n"


def code_cells(text: str) -> list[str]:
    """The bodies of the write-up's "Code: N ()" blocks, up to the next block header."""
    cells, current = [], None
    for line in text.splitlines():
        if re.match(r"^(Code|Output|Note): \d+", line):
            if current is not None:
                cells.append("\n".join(current).strip("\n"))
            current = [] if line.startswith("Code:") else None
            continue
        if current is not None:
            current.append(line)
    if current is not None:
        cells.append("\n".join(current).strip("\n"))
    return cells


def stored_cells() -> list[str]:
    return CELLS.read_text().split(SEPARATOR)


def run_cells(cells: list[str], base_url: str, base_model: str,
              steps: dict[str, str]) -> dict[str, Any]:
    """Execute the cells in one namespace, as a notebook would; returns the namespace."""
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict[str, Any] = {"__name__": "seed_notebook"}
    for cell in cells:
        source = cell.replace("tinker.ServiceClient()",
                              f"tinker.ServiceClient(base_url={base_url!r})")
        source = source.replace('"Qwen/Qwen3-4B-Instruct-2507"', repr(base_model))
        source = re.sub(r"(add_generation_prompt=(True|False))\)", r"\1, return_dict=False)",
                        source)
        source = source.replace("plt.show()", "plt.close('all')")
        for old, new in steps.items():
            source = source.replace(old, new)
        exec(compile(source, "<seed notebook cell>", "exec"), namespace)  # noqa: S102
    return namespace
