"""`edgekit run-stream ENGINE SOURCE`: wires an engine, a source, post-processing and sinks into the
pipeline, handles Ctrl-C/SIGTERM, and writes the report whatever happens. `exit_status(report)` says how a
run that returned ended: 0, or 130/143 where Ctrl-C/SIGTERM stopped it; a run that failed raises."""

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EdgekitError, Terminated
from edgekit.runtime.api import Model
from edgekit.runtime.artifacts import OUT_OF_ROOM, RunFolder, run_folder
from edgekit.runtime.backends.base import Backend
from edgekit.runtime.jetson import power
from edgekit.runtime.manifest import host_environment
from edgekit.runtime.opening import Opened, of_task, open_model
from edgekit.runtime.serving import is_served
from edgekit.runtime.stream import DEFAULT_BATCH_WAIT_MS
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
    video_fps: Optional[float] = None  # draw and encode only this many frames a second of the source's
    workers: Optional[int] = None  # inference workers; None: the backend's choice for this machine's cores
    batch: int = 1  # frames inferred at once, at most (a dynamic-batch engine)
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS  # how long a batch waits for more frames of a live source
    realtime: bool = False  # video files play at their frame rate, as live sources


# A live source runs for as long as it is left running: its annotated video rotates at this size by default.
DEFAULT_LIVE_VIDEO_MAX_MB = 1024


SIGTERM_STOP = "terminated (SIGTERM)"
# The stop reasons of an interrupted run (the pipeline's for Ctrl-C) and the exit status that says so.
_INTERRUPTED = {"interrupted (Ctrl-C)": EXIT_INTERRUPTED, SIGTERM_STOP: EXIT_TERMINATED}


def exit_status(report: Dict[str, Any]) -> int:
    """The exit status of a run that wrote its report: 130 after Ctrl-C, 143 after SIGTERM, else 0."""
    return _INTERRUPTED.get(report.get("stop_reason") or "", EXIT_OK)


class TruthSink:
    """Accuracy against the sources' per-frame ground truth, by the task's stream measure, over the sources that
    are `scored` (their truth names the model's classes)."""

    def __init__(self, model: Model, scored: Sequence[bool] = (True,)) -> None:
        self.accuracy = model.task.stream_accuracy(model.card)
        self.scored = list(scored)

    def write(self, f: Frame) -> None:
        if f.truth is not None and self.scored[f.source]:
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


def run_stream(engine: "str | Path", source_uri: "str | Sequence[str]", opts: StreamOptions) -> Dict[str, Any]:
    """Run the stream (or several: a list of URIs feeding the one engine) into `opts.out`. The run is written
    into a fresh folder that replaces `opts.out` once its report is written: an earlier run is never mixed with
    this one, and a run that fails before its report (the model or a source did not open) leaves `opts.out` as
    it was. With several sources each has its outputs in `source-K/` (K from 0, in the order given)."""
    if opts.queue_size < 1:  # 0 would make every queue unbounded: memory grows without limit on a live source
        raise EdgekitError(f"queue_size {opts.queue_size}: each queue holds at least 1 frame")
    uris = [source_uri] if isinstance(source_uri, str) else list(source_uri)
    if not uris:
        raise EdgekitError("no source given")
    if opts.batch < 1 or (opts.workers is not None and opts.workers < 1):
        raise EdgekitError(f"--batch {opts.batch} and --workers {opts.workers}: at least 1 each")
    run = _Run(engine if is_served(engine) else Path(engine), uris, opts)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, run.on_sigterm)
    try:
        with run_folder(opts.out, opts.overwrite) as folder:
            return run.run(folder)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # (not on Linux)
        return max(1, os.cpu_count() or 1)


def inference_workers(opened: Opened, workers: Optional[int], batch: int) -> Tuple[List[Backend], int]:
    """The handles inference runs on and the intra-op threads each got (0: the runtime's default): `workers` of
    them, or as many as the backend runs best on this machine's cores. A one-line error where the engine cannot
    take batches of `batch` frames or the backend runs one worker only."""
    backend = opened.backend
    limit = backend.batch_limit()
    if batch > 1 and limit is not None and limit < batch:
        raise EdgekitError(f"{opened.path}: this engine takes batches of at most {limit} frame"
                           f"{'s' if limit != 1 else ''}; run it with --batch {limit}, or make one that takes "
                           f"{batch}: edgekit export --dynamic-batch {batch}, then build-engine --max-batch {batch}")
    n_cores = cores()
    auto_n, auto_threads = backend.parallel_plan(n_cores)
    n = workers or auto_n
    threads = auto_threads if n == auto_n else (max(1, n_cores // n) if auto_threads else 0)
    if n == 1 and not threads:
        return [backend], 0
    opened_workers: List[Backend] = []
    try:
        for _ in range(n):
            opened_workers.append(backend.worker(threads))
    except BaseException:
        for w in opened_workers:
            w.close()
        raise
    return opened_workers, threads


class _Run:
    def __init__(self, engine: "Path | str", source_uris: List[str], opts: StreamOptions) -> None:
        self.engine, self.source_uris, self.opts = engine, source_uris, opts
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
        if is_served(self.engine):
            from edgekit.runtime.serving.triton_client import open_triton

            opened = of_task(open_triton(str(self.engine), reconnect=opts.reconnect), opts.task, self.engine)
        else:
            opened = open_model(self.engine, pipelined=True, task=opts.task)
        model = Model(opened, opts.score_threshold, opts.iou_threshold)
        sinks: List[Any] = []  # every frame's
        source_sinks: List[List[Any]] = []  # each source's own outputs
        videos: List[Optional[VideoSink]] = []
        sources: List[Source] = []
        workers: List[Backend] = []
        threads = 0
        several = len(self.source_uris) > 1
        try:
            workers, threads = inference_workers(opened, opts.workers, opts.batch)
            for uri in self.source_uris:
                sources.append(open_source(uri, loop=opts.loop, timeout_s=opts.timeout, reconnect=opts.reconnect,
                                           rtsp_transport=opts.rtsp_transport, rtsp_latency_ms=opts.rtsp_latency_ms,
                                           decoder=opts.decoder, realtime=opts.realtime))
            # Score against the sources' ground truth only where it names the model's classes (a model of other
            # classes on synthetic:// runs unscored).
            scored = [s.has_truth and s.truth_names.get(model.task.truth_kind) == list(model.card.classes)
                      for s in sources]
            truth = TruthSink(model, scored) if any(scored) else None
            if truth is not None:
                sinks.append(truth)
            for k, source in enumerate(sources):
                folder_k = out / f"source-{k}" if several else out
                folder_k.mkdir(exist_ok=True)
                own: List[Any] = []
                source_sinks.append(own)
                video: Optional[VideoSink] = None
                if opts.save_video:
                    max_mb = opts.video_max_mb if opts.video_max_mb is not None else (
                        DEFAULT_LIVE_VIDEO_MAX_MB if source.info.live else 0)
                    video = VideoSink(folder_k / "annotated.mp4", model, source.info.fps, max_bytes=max_mb << 20,
                                      keep_segments=opts.video_segments, video_fps=opts.video_fps,
                                      live=source.info.live)
                    own.append(video)
                videos.append(video)
                if opts.jsonl:
                    own.append(JsonlSink(folder_k / "results.jsonl", model))
                if opts.show:
                    own.append(WindowSink(model, f"edgekit: source {k}" if several else "edgekit"))
        except BaseException:
            for s in [*sinks, *(x for own in source_sinks for x in own)]:
                with contextlib.suppress(Exception):
                    s.close()
            for source in sources:
                source.close()
            _close_workers(workers, opened)
            model.close()
            raise
        progress = Progress(opts.progress)
        pipeline = Pipeline(sources, model, sinks, queue_size=opts.queue_size, max_frames=opts.max_frames,
                            duration_s=opts.duration, on_frame=progress, source_sinks=source_sinks, workers=workers,
                            batch=opts.batch, batch_wait_ms=opts.batch_wait_ms, threads_per_worker=threads)
        self.pipeline = pipeline
        if opts.progress:  # the outputs grow there during the run (tail -f results.jsonl)
            print(f"edgekit: writing to {out}; it becomes {folder.out} when the run ends", file=sys.stderr)
        sampler = power.start_sampler(opts.power)
        served: Optional[Dict[str, Any]] = None
        try:
            pipeline.run()
        finally:
            used_power = power.stop_sampler(sampler, pipeline.counters.processed)
            with contextlib.suppress(Exception):  # (a server gone at the end: its figures are left out)
                served = opened.backend.run_summary()
            progress.finish()
            for s in [*sinks, *(x for own in source_sinks for x in own)]:
                with contextlib.suppress(OSError):
                    s.close()
            _close_workers(workers, opened)
            model.close()
        for video in videos:  # an encoder that failed after the last frame was handed to it
            if video is not None and video.error is not None and pipeline.error is None:
                pipeline.error = video.error
        card = model.card
        shown = folder.out  # what the report and messages name: the folder the run ends up in
        outputs: List[Dict[str, Any]] = []
        for k, video in enumerate(videos):
            where = shown / f"source-{k}" if several else shown
            outputs.append({"folder": str(where),
                            "video": str(where / "annotated.mp4") if video is not None else None,
                            "video_files": video.summary() if video is not None else None,
                            "jsonl": str(where / "results.jsonl") if opts.jsonl else None})
        extra = {
            "engine": {"path": str(self.engine), "backend": opened.record.name, "precision": opened.precision,
                       "model": card.name, "task": card.task},
            "accuracy": truth.summary() if truth is not None else None,
            "outputs": {**outputs[0], "folder": str(shown)},
        }
        if several:
            extra["outputs"]["sources"] = outputs
        if served is not None:
            extra["server"] = served
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


def _close_workers(workers: List[Backend], opened: Opened) -> None:
    """Close the workers run-stream opened (not the model's own backend, which the model closes)."""
    for w in workers:
        if w is not opened.backend:
            with contextlib.suppress(Exception):
                w.close()


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in OUT_OF_ROOM:
        return f"{OUT_OF_ROOM[e.errno]} ({e.filename or 'output'})"
    return f"{type(e).__name__}: {e}"


__all__ = ["StreamOptions", "run_stream"]
