"""Fingerprint the first steps of the quickstart: every logged value but ``perf/*`` and the bytes of
the exported model. A refactoring that claims to change no behaviour must leave it unchanged.

    python benchmarks/quickstart_identity.py --out before.json            # on the old code
    python benchmarks/quickstart_identity.py --out after.json --compare before.json

The run is ``configs/quickstart.yaml`` cut to ``--steps`` optimizer steps (default 6) and 20
validation problems, one thread, in a temporary folder; the fingerprint is a JSON file.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _stable_bytes(path: Path) -> bytes:
    """The file's bytes; for the export's marker, without the two fields that differ every run."""
    if path.name != ".grpo-lightning-export.json":
        return path.read_bytes()
    marker = json.loads(path.read_text())
    return json.dumps({k: v for k, v in marker.items() if k not in ("id", "created")}, sort_keys=True).encode()


def fingerprint(steps: int) -> dict:
    """Run the cut quickstart and return {"metrics": rows without perf/*, "export": {file: sha256}}."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grpo_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "3",
            "--trainer.logger.init_args.save_dir", tmp, "--data.synthetic.val_size", "20",
            "--data.val_batch_size", "20",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, cwd=tmp, env=env, stdout=subprocess.DEVNULL)
        (run,) = Path(tmp, "quickstart").iterdir()
        with open(run / "metrics.csv") as f:
            rows = [
                {k: v for k, v in row.items() if v != "" and not k.startswith("perf/") and not k.endswith("_s")}
                for row in csv.DictReader(f)
            ]
        export = {
            p.relative_to(run / "hf_model").as_posix(): hashlib.sha256(_stable_bytes(p)).hexdigest()
            for p in sorted((run / "hf_model").rglob("*"))
            if p.is_file()
        }
    return {"metrics": rows, "export": export}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", required=True, help="Where to write this run's fingerprint (JSON).")
    parser.add_argument("--compare", help="A fingerprint to compare with; exit 1 when they differ.")
    args = parser.parse_args()
    result = fingerprint(args.steps)
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"{len(result['metrics'])} metric rows, {len(result['export'])} exported files -> {args.out}")
    if args.compare:
        ref = json.loads(Path(args.compare).read_text())
        bad = [k for k in ("metrics", "export") if ref[k] != result[k]]
        for key in bad:
            print(f"DIFFERENT: {key}")
            for a, b in zip(ref[key] if key == "metrics" else sorted(ref[key].items()),
                            result[key] if key == "metrics" else sorted(result[key].items()), strict=False):
                if a != b:
                    print(f"  before: {a}\n  after:  {b}")
                    break
        if bad:
            sys.exit(1)
        print("identical: metrics (all but perf/* and timings) and the exported model's bytes")


if __name__ == "__main__":
    main()
