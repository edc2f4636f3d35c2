"""`edgekit run-stream ENGINE SOURCE`: wires an engine, a source, post-processing and sinks into the
pipeline, handles Ctrl-C/SIGTERM, and writes the report whatever happens."""

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.api import Model
from edgekit.runtime.artifacts import ensure_writable_dir
from edgekit.runtime.jetson import power
from edgekit.runtime.manifest import host_environment
from edgekit.runtime.opening import open_model
from edgekit.runtime.stream import report as report_mod
from edgekit.runtime.stream.pipeline import Frame, Pipeline
from edgekit.runtime.stream.sinks import JsonlSink, VideoSink, WindowSink
from edgekit.runtime.stream.sources import open_source


@dataclass
class StreamOptions:
    out: str = "runs/stream"
    task: Optional[str] = None
    save_video: bool = True
    jsonl: bool = True
    show: bool = False
    max_frames: int = 0
    duration: float = 0.0
    loop: bool = False
    score_threshold: Optional[float] = None
    iou_threshold: Optional[float] = None
    queue_size: int = 4
    timeout: float = 5.0
    reconnect: int = 3
    rtsp_transport: str = "tcp"
    rtsp_latency_ms: int = 200
    decoder: Optional[str] = None  # auto | gstreamer | ffmpeg (default: $EDGEKIT_VIDEO_DECODER, else auto)
    progress: bool = True
    power: bool = True  # sample tegrastats on a Jetson


class TruthSink:
    """Accuracy against the source's per-frame ground truth, by the task's stream measure."""

    def __init__(self, model: Model) -> None:
        self.accuracy = model.task.stream_accuracy(model.card)

    def write(self, f: Frame) -> None:
        if f.truth is not None:
            self.accuracy.add(f.result, f.truth)

    def close(self) -> None:
        pass

    def summary(self) -> Dict[str, Any]:
        return self.accuracy.summary()


class Progress:
    """One refreshing line on stderr: frames, FPS and p90 end-to-end latency of the last second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0
        self.window: List[float] = []
        self.count0, self.t0 = 0, time.monotonic_ns()

    def __call__(self, p: Pipeline, f: Frame) -> None:
        if not self.enabled:
            return
        self.window.append((f.t["sink_end"] - f.t_capture) / 1e6)
        now = time.monotonic_ns()
        if now - self.last < 5e8:
            return
        fps = (p.counters.processed - self.count0) / max(1e-9, (now - self.t0) / 1e9)
        p90 = float(np.percentile(self.window, 90))
        print(f"\r{p.counters.processed} frames  {fps:5.1f} FPS  p90 {p90:6.1f} ms  dropped {p.counters.dropped}",
              end="", file=sys.stderr, flush=True)
        self.last, self.count0, self.t0, self.window = now, p.counters.processed, now, []

    def finish(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def run_stream(engine: "str | Path", source_uri: str, opts: StreamOptions) -> Dict[str, Any]:
    engine = Path(engine)
    if opts.queue_size < 1:  # 0 would make every queue unbounded: memory grows without limit on a live source
        raise EdgekitError(f"queue_size {opts.queue_size}: each queue holds at least 1 frame")
    out = ensure_writable_dir(opts.out)
    opened = open_model(engine, pipelined=True, task=opts.task)
    model = Model(opened, opts.score_threshold, opts.iou_threshold)
    try:
        source = open_source(source_uri, loop=opts.loop, timeout_s=opts.timeout, reconnect=opts.reconnect,
                             rtsp_transport=opts.rtsp_transport, rtsp_latency_ms=opts.rtsp_latency_ms,
                             decoder=opts.decoder)
    except BaseException:
        model.close()
        raise
    sinks: List[Any] = []
    # Score against the source's ground truth only where it names the model's classes (a model of other
    # classes on synthetic:// runs unscored).
    scored = source.has_truth and source.truth_names.get(model.task.truth_kind) == list(model.card.classes)
    truth = TruthSink(model) if scored else None
    if truth is not None:
        sinks.append(truth)
    if opts.save_video:
        sinks.append(VideoSink(out / "annotated.mp4", model, source.info.fps))
    if opts.jsonl:
        sinks.append(JsonlSink(out / "results.jsonl", model))
    if opts.show:
        sinks.append(WindowSink(model))
    progress = Progress(opts.progress)
    pipeline = Pipeline(source, model, sinks, queue_size=opts.queue_size, max_frames=opts.max_frames,
                        duration_s=opts.duration, on_frame=progress)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: pipeline.stop("terminated (SIGTERM)"))
    sampler = power.start_sampler(opts.power)
    try:
        pipeline.run()
    finally:
        used_power = power.stop_sampler(sampler, pipeline.counters.processed)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        progress.finish()
        for s in sinks:
            with contextlib.suppress(OSError):
                s.close()
        model.close()
    card = model.card
    extra = {
        "engine": {"path": str(engine), "backend": opened.record.name, "precision": opened.precision,
                   "model": card.name, "task": card.task},
        "accuracy": truth.summary() if truth is not None else None,
        "outputs": {"video": str(out / "annotated.mp4") if opts.save_video else None,
                    "jsonl": str(out / "results.jsonl") if opts.jsonl else None},
    }
    extra["environment"] = host_environment().to_dict()
    extra["power"] = used_power
    extra["jetson"] = power.jetson_state()
    rep = report_mod.write(pipeline, out, extra)
    if pipeline.error is not None:
        e = pipeline.error
        msg = str(e) if isinstance(e, EdgekitError) else _describe(e)
        raise EdgekitError(f"{msg}; report of the {pipeline.counters.processed} frames processed: {out}/report.json")
    return rep


def _describe(e: BaseException) -> str:
    import errno

    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"disk full ({e.filename or 'output'})"
    return f"{type(e).__name__}: {e}"


__all__ = ["StreamOptions", "run_stream"]
