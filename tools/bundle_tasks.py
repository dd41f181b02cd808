"""Write the BIG-bench task subsets that ship inside the package (``scenario.local_dir: bundled``).

The demo must run offline on a fresh machine, and the ``bigbench==1.0.0`` sdist it used to download is no longer
served by PyPI (only 0.0.1, which carries no tasks, since 2026-12). So the four demo tasks travel with the code:
``--examples`` of each task, drawn without replacement by a fixed seed, every other field of the file unchanged.

    python -m tools.bundle_tasks --source <folder of <task>.json or <task>/task.json> [--examples 400]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

from amole.data.bigbench import BUNDLED_DIR, local_task_path

# The demo's four (conf/scenario/bigbench_demo.yaml) and the two the compose demo's sites start with.
BUNDLED_TASKS = ("matrixshapes", "qa_wikidata", "object_counting", "word_sorting", "hyperbaton", "sports_understanding")


def bundle(source: Path, task: str, examples: int, out: Path) -> str:
    """Write ``task``'s subset to ``out``; a table row saying what was kept."""
    data = json.loads(local_task_path(source, task).read_text(encoding="utf-8"))
    n = len(data["examples"])
    keep = sorted(random.Random(f"bundle:{task}").sample(range(n), min(examples, n)))
    data["examples"] = [data["examples"][i] for i in keep]
    text = json.dumps(data, ensure_ascii=False, indent=0)
    (out / f"{task}.json").write_text(text + "\n", encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"| {task} | {n} | {len(keep)} | {digest} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("| task | examples in source | kept | sha256 (first 16) |\n|---|---:|---:|---|")
    for task in BUNDLED_TASKS:
        print(bundle(args.source, task, args.examples, args.out))


if __name__ == "__main__":
    main()
