"""Memory soak of `edgekit run-stream`: does its resident memory stay flat over a long live stream?

Runs the real CLI (`python -m edgekit run-stream`) on a live synthetic source for --minutes (default 30)
and samples the child's VmRSS from /proc every few seconds. Start RSS is taken after warm-up (at 10% of
the run), end RSS at the last sample before the stream's --duration ends (report writing and plotting
come after and are not the stream's memory). The goal (issue 15) is growth within 5% from start to end.

With --baseline-src a second edgekit (e.g. the previous commit, `git worktree add --detach
/tmp/edgekit-old HEAD~1`) runs the same stream at the same time, so the two rows compare under the same
load (BENCHMARKS.md: side by side in one run). Each child runs with PYTHONPATH and working folder set to its
own source tree, so it imports that tree's edgekit.

--no-video: the annotated video writer's own growth is a separate item; this soak measures the pipeline
and report. results.jsonl stays on (the default a user gets): it goes to disk, not to RSS.

    python benchmarks/soak.py [--minutes 30] [--baseline-src /tmp/edgekit-old] [--out /tmp/soak]
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
GOAL_PCT = 5.0


@dataclass
class Run:
    label: str
    python: List[str]
    src: Path
    out: Path
    proc: Optional[subprocess.Popen] = None
    stderr: Optional[IO[str]] = None
    t0: float = 0.0
    rss: List[Tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)


def vm_rss_mb(pid: int) -> Optional[float]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child_env(src: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(src)}


def start(run: Run, engine: Path, source: str, seconds: float) -> None:
    run.out.mkdir(parents=True, exist_ok=True)
    cmd = [*run.python, "-m", "edgekit", "run-stream", str(engine), source, "--duration", f"{seconds:g}",
           "--no-video", "-q", "-o", str(run.out / "stream")]
    run.stderr = open(run.out / "stderr.txt", "w")  # noqa: SIM115  (closed when the child has exited)
    run.proc = subprocess.Popen(cmd, cwd=run.src, env=child_env(run.src), stdout=subprocess.DEVNULL,
                                stderr=run.stderr)
    run.t0 = time.monotonic()


def row(run: Run, seconds: float) -> dict:
    """Start/end RSS, growth and growth per frame of a finished run."""
    report = json.loads((run.out / "stream" / "report.json").read_text())
    during = [(t, mb) for t, mb in run.rss if t <= seconds]
    (t_a, start_mb), (t_b, end_mb) = next((s for s in during if s[0] >= 0.1 * seconds), during[0]), during[-1]
    processed, wall = report["frames"]["processed"], report["wall_seconds"]
    frames = processed * (t_b - t_a) / wall  # frames processed between the two samples, at the run's mean rate
    growth = end_mb - start_mb
    return {"label": run.label, "frames": processed, "fps": processed / wall, "start_mb": start_mb,
            "end_mb": end_mb, "peak_mb": max(mb for _, mb in run.rss), "growth_mb": growth,
            "growth_pct": 100 * growth / start_mb, "kb_per_frame": growth * 1024 / max(1.0, frames),
            "window_s": t_b - t_a, "accounted": report["frames"]["accounted"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--source", default="synthetic://?size=320x240&fps=60",
                    help="a live source fast enough for many frames, slow enough to share the machine")
    ap.add_argument("--engine", help="ONNX or engine to stream (default: the shipped detector, exported by "
                                     "`edgekit export` into --out)")
    ap.add_argument("--python", default=sys.executable, help="interpreter (a command, e.g. 'env X=1 python')")
    ap.add_argument("--src", type=Path, default=ROOT, help="source tree of the edgekit under test")
    ap.add_argument("--baseline-src", type=Path, help="source tree of a second edgekit to run beside it")
    ap.add_argument("--baseline-python", default=None, help="its interpreter (default: --python)")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--out", type=Path, default=Path("runs/soak"))
    args = ap.parse_args()
    seconds = args.minutes * 60
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    engine = Path(args.engine).resolve() if args.engine else export_detector(args, out)

    runs = [Run("new", shlex.split(args.python), args.src.resolve(), out / "new")]
    if args.baseline_src:
        runs.insert(0, Run("baseline", shlex.split(args.baseline_python or args.python),
                           args.baseline_src.resolve(), out / "baseline"))
    for r in runs:
        start(r, engine, args.source, seconds)
    print(f"soak: {len(runs)} x run-stream {engine.name} on {args.source} for {args.minutes:g} min; "
          f"RSS every {args.sample_s:g} s -> {out}/rss.csv", flush=True)
    sample_until_done(runs, out / "rss.csv", args.sample_s)
    failed = [r for r in runs if r.proc is None or r.proc.returncode != 0]
    for r in failed:
        print(f"{r.label}: run-stream failed; see {r.out / 'stderr.txt'}", file=sys.stderr)
    if failed:
        return 1
    rows = [row(r, seconds) for r in runs]
    print_table(rows)
    (out / "soak.json").write_text(json.dumps({"source": args.source, "engine": str(engine), "minutes": args.minutes,
                                               "goal_pct": GOAL_PCT, "rows": rows}, indent=2))
    return 0 if rows[-1]["growth_pct"] <= GOAL_PCT else 2


def sample_until_done(runs: List[Run], trace_path: Path, interval_s: float) -> None:
    """Each running child's VmRSS every interval_s, into run.rss and a CSV, until all have exited."""
    with open(trace_path, "w") as trace:
        trace.write("label,seconds,rss_mb\n")
        while any(r.proc is not None and r.proc.poll() is None for r in runs):
            for r in runs:
                mb = vm_rss_mb(r.proc.pid) if r.proc is not None and r.proc.poll() is None else None
                if mb is not None:
                    t = time.monotonic() - r.t0
                    r.rss.append((t, mb))
                    trace.write(f"{r.label},{t:.1f},{mb:.1f}\n")
            trace.flush()
            time.sleep(interval_s)
    for r in runs:
        if r.stderr is not None:
            r.stderr.close()


def export_detector(args: argparse.Namespace, out: Path) -> Path:
    """The shipped detector as ONNX, by the CLI of the edgekit under test."""
    onnx = out / "edgenet-det-s.onnx"
    if not onnx.is_file():
        src = args.src.resolve()
        subprocess.run([*shlex.split(args.python), "-m", "edgekit", "export",
                        str(src / "models" / "detector" / "edgenet-det-s.safetensors"), "-o", str(onnx)],
                       cwd=src, env=child_env(src), check=True, stdout=subprocess.DEVNULL)
    return onnx


def print_table(rows: List[dict]) -> None:
    print(f"\n| edgekit | frames | FPS | RSS start (MB) | RSS end (MB) | peak | growth (MB) | growth | KB/frame | "
          f"within {GOAL_PCT:g}% |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for x in rows:
        print(f"| {x['label']} | {x['frames']} | {x['fps']:.1f} | {x['start_mb']:.1f} | {x['end_mb']:.1f} | "
              f"{x['peak_mb']:.1f} | {x['growth_mb']:+.1f} | {x['growth_pct']:+.1f}% | {x['kb_per_frame']:+.3f} | "
              f"{'yes' if x['growth_pct'] <= GOAL_PCT else 'NO'} |")
    print(f"\nstart at 10% of the run, end at the last sample before --duration ended "
          f"({rows[-1]['window_s']:.0f} s between them); KB/frame over the frames between the two samples")
    if len(rows) == 2:
        base, new = rows
        if new["growth_mb"] > 0:
            print(f"growth baseline / new: {base['growth_mb'] / new['growth_mb']:.1f}x")
        else:
            print(f"growth baseline {base['growth_mb']:+.1f} MB, new {new['growth_mb']:+.1f} MB (does not grow)")


if __name__ == "__main__":
    sys.exit(main())
