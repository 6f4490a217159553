"""Write data/arithmetic_heldout.jsonl: the fixed evaluation set of the arithmetic task.

300 distinct problems, 100 each with 1, 2 and 3 pairs, from the default difficulty, drawn on
the held-out stream (its own derivation prefix, so no training seed reproduces its draws).
The file is shipped; rerunning this script rewrites it byte for byte.

    python data/make_arithmetic_heldout.py
"""

import json
import sys
from pathlib import Path

# Run as a plain script from anywhere: put the repository root on the path for `common`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.arithmetic import DEFAULT_HELDOUT, heldout_problems  # noqa: E402

SEED = 12345
PER_PAIR_COUNT = 100


def main() -> None:
    problems = heldout_problems(SEED, PER_PAIR_COUNT)
    lines = [json.dumps(problem.to_row()) for problem in problems]
    DEFAULT_HELDOUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} problems to {DEFAULT_HELDOUT}")


if __name__ == "__main__":
    main()
