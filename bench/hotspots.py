"""Where a profiled process spends its time: the functions with the most samples, inclusive and
self, from py-spy's collapsed stacks (`BENCH_PROFILE=<folder>` on a benchmark writes them).

Usage: python bench/hotspots.py FILE [TOP] [FILTER]
FILTER keeps only frames whose text contains it (for example `concierge/` or `services/`).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def main() -> None:
    path = Path(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    only = sys.argv[3] if len(sys.argv) > 3 else ""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = stack.split(";")
        total += samples
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    print(f"{path.name}: {total} samples")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"-- {title}")
        shown = 0
        for frame, samples in counter.most_common():
            if only and only not in frame:
                continue
            print(f"{100 * samples / max(total, 1):5.1f}%  {frame}")
            shown += 1
            if shown >= top:
                break


if __name__ == "__main__":
    main()
