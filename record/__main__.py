"""``python -m record --doc``: print docs/results.md; ``python -m record FILE...``: check records."""

from __future__ import annotations

import sys
from pathlib import Path

from record.schema import markdown, problems
from record.store import RecordError, load


def main(argv: list[str]) -> int:
    if argv == ["--doc"]:
        sys.stdout.write(markdown())
        return 0
    if not argv or argv[0].startswith("-"):
        print("usage: python -m record --doc | python -m record FILE...", file=sys.stderr)
        return 2
    bad = 0
    for name in argv:
        try:
            found = problems(load(Path(name)))
        except (RecordError, OSError) as e:
            found = [str(e)]
        for p in found:
            print(f"{name}: {p}")
        bad += bool(found)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
