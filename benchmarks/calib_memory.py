"""Peak memory of `edgekit build-engine --precision int8` against the number of calibration images, for two
checkouts of edgekit side by side (issue 15, item 7: every calibration image used to be held decoded, and again
preprocessed, until the build ended).

Each build runs as its own process (`python -m edgekit build-engine ...` with the checkout first on
sys.path); its peak resident memory is the child's ru_maxrss from os.wait4. Make the images and a baseline
checkout first, e.g.:

    edgekit data synth /tmp/calib-640 --train 1600 --val 0 --test 0 --size 640x480 --videos 0 -q
    git worktree add --detach /tmp/edgekit-calib-old HEAD
    python benchmarks/calib_memory.py --images /tmp/calib-640/images/train --old /tmp/edgekit-calib-old \\
        --sizes 200,800,1600

The ONNX is the shipped detector, exported once by the new checkout (or --onnx). The histogram methods
(entropy, percentile) of the old code held every image's activations: give them small --sizes first.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

NEW = Path(__file__).resolve().parents[1]


def build(checkout: Path, onnx: Path, images: Path, n: int, method: str, out: Path) -> Tuple[float, float, str]:
    """(peak RSS in MiB, seconds, last stderr line) of one INT8 build by `checkout`."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = [sys.executable, "-m", "edgekit", "build-engine", str(onnx), "-o", str(out), "--backend", "onnxruntime",
           "--precision", "int8", "--calib", str(images), "--calib-size", str(n), "--calib-method", method]
    t0 = time.perf_counter()
    # cwd = the checkout: `python -m` puts the working folder first on sys.path, before PYTHONPATH.
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        err.seek(0)
        lines = [ln for ln in err.read().splitlines() if ln.strip()]
    if child.returncode != 0:
        raise SystemExit(f"{checkout}: build-engine --calib-size {n} failed ({child.returncode}): "
                         f"{lines[-1] if lines else '?'}")
    return usage.ru_maxrss / 1024, seconds, lines[-1] if lines else ""


def which_edgekit(checkout: Path) -> str:
    code = "import edgekit, os; print(os.path.dirname(edgekit.__file__))"
    return subprocess.run([sys.executable, "-c", code], cwd=checkout, env=dict(os.environ, PYTHONPATH=str(checkout)),
                          capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True, type=Path, help="folder of calibration images")
    ap.add_argument("--old", required=True, type=Path, help="the baseline checkout (a git worktree)")
    ap.add_argument("--new", type=Path, default=NEW, help="the checkout to compare (default: this one)")
    ap.add_argument("--onnx", type=Path, help="ONNX to build (default: the shipped detector, exported here)")
    ap.add_argument("--sizes", default="200,800,1600", help="calibration image counts (default 200,800,1600)")
    ap.add_argument("--method", default="minmax", help="calibration method (default minmax)")
    args = ap.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    for c in (args.old, args.new):
        found = which_edgekit(c)
        if Path(found).resolve() != (c / "edgekit").resolve():
            raise SystemExit(f"{c}: python -m edgekit would run {found}, not this checkout")
    with tempfile.TemporaryDirectory(prefix="calib-memory-") as tmp:
        onnx = args.onnx
        if onnx is None:
            onnx = Path(tmp) / "det.onnx"
            ckpt = NEW / "models" / "detector" / "edgenet-det-s.safetensors"
            subprocess.run([sys.executable, "-m", "edgekit", "export", str(ckpt), "-o", str(onnx)], cwd=args.new,
                           check=True, capture_output=True)
        rows: List[Dict] = []
        print(f"INT8 build of {onnx.name}, --calib-method {args.method}, images from {args.images}")
        print(f"{'images':>6} | {'old peak MiB':>12} | {'new peak MiB':>12} | {'old/new':>7} | {'old s':>6} | "
              f"{'new s':>6}")
        for n in sizes:
            old_mb, old_s, _ = build(args.old, onnx, args.images, n, args.method, Path(tmp) / "old.onnx")
            new_mb, new_s, _ = build(args.new, onnx, args.images, n, args.method, Path(tmp) / "new.onnx")
            rows.append(dict(n=n, old=old_mb, new=new_mb))
            print(f"{n:>6} | {old_mb:>12.0f} | {new_mb:>12.0f} | {old_mb / new_mb:>7.2f} | {old_s:>6.1f} | "
                  f"{new_s:>6.1f}", flush=True)
        if len(rows) > 1:
            a, b = rows[0], rows[-1]
            per = {k: (b[k] - a[k]) / (b["n"] - a["n"]) * 1024 for k in ("old", "new")}
            print(f"growth per image from {a['n']} to {b['n']}: old {per['old']:.0f} KiB, new {per['new']:.0f} KiB")


if __name__ == "__main__":
    main()
