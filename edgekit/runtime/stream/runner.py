"""`edgekit run-stream ENGINE SOURCE`: wires an engine, a source, post-processing and sinks into the
pipeline, handles Ctrl-C/SIGTERM, and writes the report whatever happens. `exit_status(report)` says how a
run that returned ended: 0, or 130/143 where Ctrl-C/SIGTERM stopped it; a run that failed raises."""

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgekit.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EdgekitError, Terminated
from edgekit.runtime.api import Model
from edgekit.runtime.artifacts import OUT_OF_ROOM, RunFolder, run_folder
from edgekit.runtime.jetson import power
from edgekit.runtime.manifest import host_environment
from edgekit.runtime.opening import open_model
from edgekit.runtime.stream import report as report_mod
from edgekit.runtime.stream.pipeline import Frame, Pipeline
from edgekit.runtime.stream.sinks import JsonlSink, VideoSink, WindowSink
from edgekit.runtime.stream.sources import Source, open_source


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
    overwrite: bool = False  # replace an --out that holds other files than an earlier run
    video_max_mb: Optional[int] = None  # segment size; None: unlimited for files, DEFAULT_LIVE_VIDEO_MAX_MB live
    video_segments: int = 2  # finished segments kept besides the one being written


# A live source runs for as long as it is left running: its annotated video rotates at this size by default.
DEFAULT_LIVE_VIDEO_MAX_MB = 1024


SIGTERM_STOP = "terminated (SIGTERM)"
# The stop reasons of an interrupted run (the pipeline's for Ctrl-C) and the exit status that says so.
_INTERRUPTED = {"interrupted (Ctrl-C)": EXIT_INTERRUPTED, SIGTERM_STOP: EXIT_TERMINATED}


def exit_status(report: Dict[str, Any]) -> int:
    """The exit status of a run that wrote its report: 130 after Ctrl-C, 143 after SIGTERM, else 0."""
    return _INTERRUPTED.get(report.get("stop_reason") or "", EXIT_OK)


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
    """Run the stream into `opts.out`. The run is written into a fresh folder that replaces `opts.out` once
    its report is written: an earlier run is never mixed with this one, and a run that fails before its
    report (the model or the source did not open) leaves `opts.out` as it was."""
    if opts.queue_size < 1:  # 0 would make every queue unbounded: memory grows without limit on a live source
        raise EdgekitError(f"queue_size {opts.queue_size}: each queue holds at least 1 frame")
    run = _Run(Path(engine), source_uri, opts)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, run.on_sigterm)
    try:
        with run_folder(opts.out, opts.overwrite) as folder:
            return run.run(folder)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Run:
    def __init__(self, engine: Path, source_uri: str, opts: StreamOptions) -> None:
        self.engine, self.source_uri, self.opts = engine, source_uri, opts
        self.pipeline: Optional[Pipeline] = None

    def on_sigterm(self, *_: Any) -> None:
        """SIGTERM stops the pipeline like Ctrl-C (frames in flight finished, report written); before the
        pipeline runs it interrupts the opening, and the new run's folder is removed."""
        if self.pipeline is not None:
            self.pipeline.stop(SIGTERM_STOP)
        else:
            raise Terminated("terminated (SIGTERM) before the stream started")

    def run(self, folder: RunFolder) -> Dict[str, Any]:
        opts, out = self.opts, folder.path
        opened = open_model(self.engine, pipelined=True, task=opts.task)
        model = Model(opened, opts.score_threshold, opts.iou_threshold)
        sinks: List[Any] = []
        source: Optional[Source] = None
        try:
            source = open_source(self.source_uri, loop=opts.loop, timeout_s=opts.timeout, reconnect=opts.reconnect,
                                 rtsp_transport=opts.rtsp_transport, rtsp_latency_ms=opts.rtsp_latency_ms,
                                 decoder=opts.decoder)
            # Score against the source's ground truth only where it names the model's classes (a model of other
            # classes on synthetic:// runs unscored).
            scored = source.has_truth and source.truth_names.get(model.task.truth_kind) == list(model.card.classes)
            truth = TruthSink(model) if scored else None
            if truth is not None:
                sinks.append(truth)
            video: Optional[VideoSink] = None
            if opts.save_video:
                max_mb = opts.video_max_mb if opts.video_max_mb is not None else (
                    DEFAULT_LIVE_VIDEO_MAX_MB if source.info.live else 0)
                video = VideoSink(out / "annotated.mp4", model, source.info.fps, max_bytes=max_mb << 20,
                                  keep_segments=opts.video_segments)
                sinks.append(video)
            if opts.jsonl:
                sinks.append(JsonlSink(out / "results.jsonl", model))
            if opts.show:
                sinks.append(WindowSink(model))
        except BaseException:
            for s in sinks:
                with contextlib.suppress(Exception):
                    s.close()
            if source is not None:
                source.close()
            model.close()
            raise
        progress = Progress(opts.progress)
        pipeline = Pipeline(source, model, sinks, queue_size=opts.queue_size, max_frames=opts.max_frames,
                            duration_s=opts.duration, on_frame=progress)
        self.pipeline = pipeline
        if opts.progress:  # the outputs grow there during the run (tail -f results.jsonl)
            print(f"edgekit: writing to {out}; it becomes {folder.out} when the run ends", file=sys.stderr)
        sampler = power.start_sampler(opts.power)
        try:
            pipeline.run()
        finally:
            used_power = power.stop_sampler(sampler, pipeline.counters.processed)
            progress.finish()
            for s in sinks:
                with contextlib.suppress(OSError):
                    s.close()
            model.close()
        card = model.card
        shown = folder.out  # what the report and messages name: the folder the run ends up in
        extra = {
            "engine": {"path": str(self.engine), "backend": opened.record.name, "precision": opened.precision,
                       "model": card.name, "task": card.task},
            "accuracy": truth.summary() if truth is not None else None,
            "outputs": {"folder": str(shown),
                        "video": str(shown / "annotated.mp4") if video is not None else None,
                        "video_files": video.summary() if video is not None else None,
                        "jsonl": str(shown / "results.jsonl") if opts.jsonl else None},
        }
        extra["environment"] = host_environment().to_dict()
        extra["power"] = used_power
        extra["jetson"] = power.jetson_state()
        rep = report_mod.write(pipeline, out, extra)
        folder.commit()
        rep["plots"] = [str(shown / Path(p).name) for p in rep.get("plots", [])]
        if pipeline.error is not None:
            e = pipeline.error
            msg = str(e) if isinstance(e, EdgekitError) else _describe(e)
            err = EdgekitError(f"{msg}; report of the {pipeline.counters.processed} frames processed: "
                               f"{shown}/report.json")
            err.exit_code = getattr(e, "exit_code", err.exit_code)  # a failed source (3) stays one
            raise err
        return rep


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in OUT_OF_ROOM:
        return f"{OUT_OF_ROOM[e.errno]} ({e.filename or 'output'})"
    return f"{type(e).__name__}: {e}"


__all__ = ["StreamOptions", "run_stream"]
