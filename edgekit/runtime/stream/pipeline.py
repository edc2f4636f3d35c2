"""The threaded pipeline: capture -> preprocess -> infer -> postprocess -> sink, bounded queues between.

Every frame keeps its index and capture time to the end and gets a monotonic timestamp at each stage
boundary. Frame accounting is exact: frames_in = processed + dropped, also after Ctrl-C, SIGTERM, a
source that stops delivering, or a failing stage (in-flight frames are finished, not lost). A finished
frame's timings go into constant-memory histograms and the frame is let go: memory stays flat however
long the stream runs.
"""

import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.api import Model
from edgekit.runtime.measure.stats import LatencyHistogram
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.stream.sources import Source

STAGES = ("capture", "preprocess", "infer", "postprocess", "sink")
_END = object()


@dataclass
class Frame:
    index: int
    t_capture: int
    image: np.ndarray
    truth: Optional[Dict[str, Any]] = None
    tensor: Optional[np.ndarray] = None
    transform: Optional[Transform] = None
    output: Optional[Dict[str, np.ndarray]] = None  # raw outputs by name
    result: Any = None
    t: Dict[str, int] = field(default_factory=dict)  # "<stage>_start"/"<stage>_end" -> monotonic ns
    device_ms: Optional[float] = None
    source_name: Optional[str] = None  # the file a frame came from, for image folders


class StreamStats:
    """Latency distributions of the processed frames per stage, per queue wait, end to end and on the device
    (histograms: exact counts, percentiles within 1%), and the end-to-end latencies of the last `recent`
    frames for the plots."""

    def __init__(self, recent: int) -> None:
        self.stages = {s: LatencyHistogram() for s in STAGES}
        self.queue_waits = {f"{a}->{b}": LatencyHistogram() for a, b in zip(STAGES, STAGES[1:])}
        self.end_to_end = LatencyHistogram()
        self.device = LatencyHistogram()
        self.recent_end_to_end_ms: Deque[float] = deque(maxlen=recent)
        # (from, to, histogram) of each stage's work and each wait in a queue, as keys of Frame.t
        self._spans = [(f"{s}_start", f"{s}_end", self.stages[s]) for s in STAGES] + [
            (f"{a}_end", f"{b}_start", self.queue_waits[f"{a}->{b}"]) for a, b in zip(STAGES, STAGES[1:])]

    def add(self, f: Frame) -> None:
        """A frame through every stage."""
        t = f.t
        for start, end, h in self._spans:
            h.add((t[end] - t[start]) / 1e6)
        e2e = (t["sink_end"] - f.t_capture) / 1e6
        self.end_to_end.add(e2e)
        self.recent_end_to_end_ms.append(e2e)
        if f.device_ms is not None:
            self.device.add(f.device_ms)


@dataclass
class Counters:
    frames_in: int = 0
    processed: int = 0
    dropped: int = 0


class Pipeline:
    """Runs one source through one model (preprocess, infer and decode are the model's calls) into the
    sinks' `write(frame)`. Collects the timings' statistics for the report; the plots show the last
    `plot_frames` frames."""

    def __init__(self, source: Source, model: Model, sinks: List[Any], queue_size: int = 4,
                 max_frames: int = 0, duration_s: float = 0.0,
                 on_frame: Optional[Callable[["Pipeline", Frame], None]] = None, plot_frames: int = 5000) -> None:
        self.source, self.model, self.sinks = source, model, sinks
        self.max_frames, self.duration_s = max_frames, duration_s
        self.on_frame = on_frame
        self.live = source.info.live
        if queue_size < 1:  # Queue(0) is unbounded
            raise EdgekitError(f"queue_size {queue_size}: each queue holds at least 1 frame")
        self.queues = [queue.Queue(maxsize=queue_size) for _ in STAGES[1:]]
        self.counters = Counters()
        self.stats = StreamStats(plot_frames)
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.error: Optional[BaseException] = None
        self._source_error: Optional[BaseException] = None  # becomes `error` once the frames in flight are done
        self._lock = threading.Lock()
        self.t_start = self.t_end = 0

    # --- stages -----------------------------------------------------------------------------
    def _capture(self) -> None:
        q = self.queues[0]
        deadline = time.monotonic_ns() + int(self.duration_s * 1e9) if self.duration_s else 0
        try:
            frames = self.source.frames()
            while not self.stop_event.is_set():
                t0 = time.monotonic_ns()
                try:
                    cap = next(frames)
                except StopIteration:
                    self.stop_reason = self.stop_reason or "end of stream"
                    break
                f = Frame(self.counters.frames_in, cap.t_capture, cap.frame, cap.truth,
                          source_name=getattr(cap, "name", None))
                # capture = reading/decoding the frame (a file) or producing it (synthetic); a camera's
                # wait for its next frame is not pipeline time.
                f.t["capture_start"] = cap.t_work if cap.t_work is not None else min(t0, cap.t_capture)
                f.t["capture_end"] = time.monotonic_ns()
                self.counters.frames_in += 1
                if self.live:
                    self._put_dropping_oldest(q, f)
                elif not self._put_blocking(q, f):
                    with self._lock:  # the pipeline failed while this frame waited to enter it
                        self.counters.dropped += 1
                if self.max_frames and self.counters.frames_in >= self.max_frames:
                    self.stop_reason = self.stop_reason or f"--max-frames {self.max_frames} reached"
                    break
                if deadline and time.monotonic_ns() >= deadline:
                    self.stop_reason = self.stop_reason or f"--duration {self.duration_s:g} s reached"
                    break
        except BaseException as e:  # a source that fails mid-run: the frames it delivered are finished and reported
            self._source_error = e
            self.stop_reason = self.stop_reason or "source failed"
        finally:
            self.source.close()
            self._put_blocking(q, _END, force=True)

    def _put_dropping_oldest(self, q: "queue.Queue[Any]", item: Any) -> None:
        while True:
            try:
                q.put_nowait(item)
                return
            except queue.Full:
                try:
                    q.get_nowait()
                    with self._lock:
                        self.counters.dropped += 1
                except queue.Empty:
                    pass

    def _put_blocking(self, q: "queue.Queue[Any]", item: Any, force: bool = False) -> bool:
        """Put, waiting for room; gives up (False) only when the pipeline failed and `force` is off."""
        while True:
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self.error is not None and not force:
                    return False

    def _stage(self, name: str, qin: "queue.Queue[Any]", qout: "Optional[queue.Queue[Any]]",
               work: Callable[[Frame], None]) -> None:
        failed = False
        while True:
            item = qin.get()
            if item is _END:
                if qout is not None:
                    self._put_blocking(qout, _END, force=True)
                return
            f: Frame = item
            if failed or self.error is not None:
                with self._lock:  # a stage failed: the frames still in flight are counted as dropped
                    self.counters.dropped += 1
                continue
            f.t[f"{name}_start"] = time.monotonic_ns()
            try:
                work(f)
            except BaseException as e:
                failed = True
                self._fail(e)
                with self._lock:
                    self.counters.dropped += 1
                continue
            f.t[f"{name}_end"] = time.monotonic_ns()
            if qout is not None:
                self._put_blocking(qout, f, force=True)
            else:
                self.stats.add(f)  # only this thread writes stats; the report reads them after run()
                with self._lock:
                    self.counters.processed += 1
                if self.on_frame is not None:
                    self.on_frame(self, f)

    def _fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e
        self.stop_event.set()

    # --- work of each stage -----------------------------------------------------------------
    def _preprocess(self, f: Frame) -> None:
        f.tensor, f.transform = self.model.preprocess(f.image)

    def _infer(self, f: Frame) -> None:
        assert f.tensor is not None
        f.output = self.model.infer(f.tensor)
        f.device_ms = self.model.last_timing.device_ms
        f.tensor = None  # free it early: only the outputs travel on

    def _post(self, f: Frame) -> None:
        assert f.output is not None and f.transform is not None
        f.result = self.model.decode(f.output, f.transform)
        f.output = None

    def _sink(self, f: Frame) -> None:
        for s in self.sinks:
            s.write(f)

    # --- run --------------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop_event.set()

    def run(self) -> None:
        """Run to the end of the stream (or stop()); in-flight frames are finished before returning."""
        self.t_start = time.monotonic_ns()
        q = self.queues
        work = [
            (self._capture, ()),
            (self._stage, ("preprocess", q[0], q[1], self._preprocess)),
            (self._stage, ("infer", q[1], q[2], self._infer)),
            (self._stage, ("postprocess", q[2], q[3], self._post)),
            (self._stage, ("sink", q[3], None, self._sink)),
        ]
        # Completion is signalled by events, not Thread.join: a join interrupted by Ctrl-C can report a
        # live thread as finished, and closing the sinks under a running sink thread crashes OpenCV.
        finished = [threading.Event() for _ in work]

        def runner(target: Callable[..., None], args: Any, done: threading.Event) -> None:
            try:
                target(*args)
            finally:
                done.set()

        for (target, args), done in zip(work, finished):
            threading.Thread(target=runner, args=(target, args, done), daemon=True).start()

        def wait_all() -> None:
            for done in finished:
                while not done.wait(0.1):
                    pass

        try:
            wait_all()
        except KeyboardInterrupt:
            self.stop("interrupted (Ctrl-C)")
            try:
                wait_all()  # finish the frames in flight, then report
            except KeyboardInterrupt:
                os._exit(130)  # a second Ctrl-C: leave now, without a report
        self.t_end = time.monotonic_ns()
        if self.error is None and self._source_error is not None:
            self.error = self._source_error
