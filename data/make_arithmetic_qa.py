"""Write the seed's arithmetic task as a GSM8K-style question/answer dataset (`--task dataset:`).

data/arithmetic_qa.jsonl: 1,000 rows {"question": "3, 5, 2, 4", "answer": "Add pairs: 3+5=8,
2+4=6\\nMultiply: 8×6=48\\n#### 48"}: problems 0-999 of the training stream (seed 0), with the
worked answer in GSM8K's form, whose final "#### N" is the reference answer.
data/arithmetic_prompt.txt: the seed's system prompt, for `--system_prompt @FILE`.
Both are shipped; rerunning this script rewrites them byte for byte.

    python data/make_arithmetic_qa.py
"""

import json
import sys
from pathlib import Path

# Run as a plain script from anywhere: put the repository root on the path for `common`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.arithmetic import SYSTEM_PROMPT, TRAIN_STREAM, problem_at, work_lines  # noqa: E402

DATA = Path(__file__).resolve().parent
ROWS = 1000


def main() -> None:
    lines = []
    for index in range(ROWS):
        problem = problem_at(TRAIN_STREAM, 0, index)
        work = "\n".join(work_lines(problem.numbers, problem.sums, problem.answer))
        lines.append(json.dumps({"question": ", ".join(map(str, problem.numbers)),
                                 "answer": f"{work}\n#### {problem.answer}"}, ensure_ascii=False))
    (DATA / "arithmetic_qa.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (DATA / "arithmetic_prompt.txt").write_text(SYSTEM_PROMPT + "\n", encoding="utf-8")
    print(f"wrote {ROWS} rows to data/arithmetic_qa.jsonl and the seed's system prompt to "
          "data/arithmetic_prompt.txt")


if __name__ == "__main__":
    main()
