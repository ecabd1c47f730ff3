"""``python -m itwinai_lightning.benchmark.finish RUN_DIR EXIT_CODE [STDERR]``: an sbatch job's last step.

Marks the grid point's RunRecord completed or failed (with the error line), as the in-place runner does.
"""

from __future__ import annotations

import sys

from itwinai_lightning.benchmark.runner import finish_point


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(
            "usage: python -m itwinai_lightning.benchmark.finish RUN_DIR EXIT_CODE [STDERR_FILE]",
            file=sys.stderr,
        )
        return 2
    finish_point(argv[0], int(argv[1]), argv[2] if len(argv) == 3 else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
