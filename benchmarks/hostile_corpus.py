"""Score a large folder of valid, damaged and hostile inputs in one run: wall time, peak RSS, records.

Builds ``--copies`` seeded copies of the test corpus (tests/corpus.py) under one folder, runs
``clinreadnet score FOLDER --format jsonl`` once with the shipped weights, and reports how long
it took, the peak resident memory of the run, how many records of each kind it wrote and
whether stderr held a traceback.

    .venv/bin/python benchmarks/hostile_corpus.py --copies 25 --json benchmarks/results/hostile_corpus.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.corpus import build_corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=25)
    parser.add_argument("--json", dest="json_path", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clinreadnet-corpus-") as tmp:
        root = Path(tmp) / "corpus"
        expected = [build_corpus(root / f"copy-{k:03d}", seed=k) for k in range(args.copies)]
        entries = sum(1 for _ in root.rglob("*") if not _.is_dir())
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "clinreadnet_cli", "score", str(root), "--format", "jsonl"],
                             capture_output=True, text=True)
        seconds = time.perf_counter() - start
    records = [json.loads(line) for line in run.stdout.splitlines()]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "entries": entries, "exit_code": run.returncode, "seconds": round(seconds, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "slices_scored": sum("score" in r for r in records), "error_records": sum("error" in r for r in records),
        "expected_scored": sum(sum(e.scored.values()) + sum(n for n, _ in e.partly.values()) for e in expected),
        "expected_errors": sum(len(e.errors) + len(e.partly) for e in expected),
        "either": sum(len(e.either) for e in expected),
        "traceback_on_stderr": "Traceback" in run.stderr,
    }
    print(json.dumps(result, indent=2))
    if args.json_path:
        args.json_path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
