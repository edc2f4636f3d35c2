"""The threaded pipeline: capture -> preprocess -> infer -> postprocess -> sink, bounded queues between.

One capture thread per source (several sources feed one engine, DeepStream's stream-muxer model): each has its
own bounded queue, from which the preprocess stage takes round-robin, so a live source that runs ahead drops its
own oldest frames, never another source's. The infer stage may run several workers (ONNX Runtime sessions of
one thread each, TensorRT execution contexts each on its own stream), each taking up to `batch` ready frames at
once; frames leave it in the order they came in (a reorder buffer), so every later stage sees each source's
frames in order.

Every frame keeps its source, index and capture time to the end and gets a monotonic timestamp at each stage
boundary. Frame accounting is exact, per source and in total: frames_in = processed + dropped, also after
Ctrl-C, SIGTERM, a source that stops delivering, or a failing stage (in-flight frames are finished, not lost).
A finished frame's timings go into constant-memory histograms and the frame is let go: memory stays flat
however long the stream runs.
"""

import os
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Union

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.api import Model
from edgekit.runtime.backends.base import Backend, StopWaiting
from edgekit.runtime.measure.stats import LatencyHistogram
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.stream import DEFAULT_BATCH_WAIT_MS
from edgekit.runtime.stream.sources import Source

STAGES = ("capture", "preprocess", "infer", "postprocess", "sink")
_END = object()


@dataclass
class Frame:
    index: int  # within its source
    t_capture: int
    image: np.ndarray
    truth: Optional[Dict[str, Any]] = None
    tensor: Optional[np.ndarray] = None
    transform: Optional[Transform] = None
    output: Optional[Dict[str, np.ndarray]] = None  # raw outputs by name, of the frame's whole batch
    result: Any = None
    t: Dict[str, int] = field(default_factory=dict)  # "<stage>_start"/"<stage>_end" -> monotonic ns
    device_ms: Optional[float] = None  # device time of the frame's batch (CUDA events around the compute)
    engine_ms: Optional[float] = None  # host-to-device copy + compute + device-to-host copy of its batch
    source_name: Optional[str] = None  # the file a frame came from, for image folders
    source: int = 0  # which of the run's sources it came from
    batch_index: int = 0  # its row in `output`
    seq: int = -1  # its place in the order frames entered the infer stage, which is the order they leave it


class StreamStats:
    """Latency distributions of the processed frames per stage, per queue wait, end to end and on the device
    (histograms: exact counts, percentiles within 1%), and the end-to-end latencies of the last `recent`
    frames for the plots."""

    def __init__(self, recent: int) -> None:
        self.stages = {s: LatencyHistogram() for s in STAGES}
        self.queue_waits = {f"{a}->{b}": LatencyHistogram() for a, b in zip(STAGES, STAGES[1:])}
        self.end_to_end = LatencyHistogram()
        self.device = LatencyHistogram()
        self.engine = LatencyHistogram()
        self.recent_end_to_end_ms: Deque[float] = deque(maxlen=recent)
        # (from, to, histogram) of each stage's work and each wait in a queue, as keys of Frame.t
        self._spans = [(f"{s}_start", f"{s}_end", self.stages[s]) for s in STAGES] + [
            (f"{a}_end", f"{b}_start", self.queue_waits[f"{a}->{b}"]) for a, b in zip(STAGES, STAGES[1:])]

    def add(self, f: Frame) -> float:
        """A frame through every stage; returns its end-to-end latency (ms)."""
        t = f.t
        for start, end, h in self._spans:
            h.add((t[end] - t[start]) / 1e6)
        e2e = (t["sink_end"] - f.t_capture) / 1e6
        self.end_to_end.add(e2e)
        self.recent_end_to_end_ms.append(e2e)
        if f.device_ms is not None:
            self.device.add(f.device_ms)
        if f.engine_ms is not None:
            self.engine.add(f.engine_ms)
        return e2e


@dataclass
class Counters:
    frames_in: int = 0
    processed: int = 0
    dropped: int = 0


class Feed:
    """One source of a run: its frames' accounting, end-to-end latency and the sinks of its own outputs."""

    def __init__(self, index: int, source: Source, sinks: Sequence[Any]) -> None:
        self.index, self.source, self.sinks = index, source, list(sinks)
        self.counters = Counters()
        self.end_to_end = LatencyHistogram()
        self.stop_reason = ""
        self.error: Optional[BaseException] = None


class Mux:
    """The sources' captured frames, one bounded queue per source, taken round-robin: a live source that runs
    ahead drops its own oldest frame (`put` returns it, for counting), a file source waits for room."""

    def __init__(self, sources: int, size: int) -> None:
        self.queues: List[Deque[Frame]] = [deque() for _ in range(sources)]
        self.size = size
        self.open = sources  # sources still delivering
        self.cond = threading.Condition()
        self.next = 0

    def put(self, k: int, frame: Frame, drop_oldest: bool, give_up: Callable[[], bool]) -> Optional[Frame]:
        """Queue `frame` of source k; returns the frame that did not enter (its oldest, dropped for it; or the
        frame itself where `give_up()` said to stop waiting for room), else None."""
        with self.cond:
            q = self.queues[k]
            while len(q) >= self.size:
                if drop_oldest:
                    dropped = q.popleft()
                    q.append(frame)
                    self.cond.notify_all()
                    return dropped
                if give_up():
                    return frame
                self.cond.wait(0.1)
            q.append(frame)
            self.cond.notify_all()
            return None

    def close(self) -> None:
        """A source has delivered its last frame."""
        with self.cond:
            self.open -= 1
            self.cond.notify_all()

    def get(self) -> Any:
        """The next frame, round-robin over the sources that have one; _END once every source has ended and
        every frame was taken."""
        with self.cond:
            n = len(self.queues)
            while True:
                for i in range(n):
                    j = (self.next + i) % n
                    if self.queues[j]:
                        self.next = (j + 1) % n
                        frame = self.queues[j].popleft()
                        self.cond.notify_all()
                        return frame
                if self.open <= 0:
                    return _END
                self.cond.wait()


class InOrder:
    """Results of parallel workers, passed on in the order their frames were taken (sequence numbers 0, 1, ...).
    A frame that was dropped is done with None. A worker that finishes far ahead of an earlier frame waits while
    `limit` results are held, so memory stays bounded behind one slow frame."""

    def __init__(self, put: Callable[[Frame], None], limit: int) -> None:
        self.put, self.limit = put, max(1, limit)
        self.cond = threading.Condition()
        self.next = 0
        self.held: Dict[int, Optional[Frame]] = {}

    def done(self, seq: int, frame: Optional[Frame]) -> None:
        with self.cond:
            while len(self.held) >= self.limit and seq != self.next:
                self.cond.wait(0.1)
            self.held[seq] = frame
            while self.next in self.held:
                ready = self.held.pop(self.next)
                self.next += 1
                if ready is not None:
                    self.put(ready)
            self.cond.notify_all()


class Pipeline:
    """Runs one or more sources through one model (preprocess, infer and decode are the model's calls) into the
    sinks' `write(frame)`: `sinks` take every frame, `source_sinks[k]` the frames of source k. Inference runs on
    `workers` (handles on the model's engine, see Backend.worker; default: the model's own backend), each taking
    up to `batch` frames at once. Collects the timings' statistics for the report; the plots show the last
    `plot_frames` frames. `max_frames` and `duration_s` bound each source."""

    def __init__(self, source: Union[Source, Sequence[Source]], model: Model, sinks: List[Any], queue_size: int = 4,
                 max_frames: int = 0, duration_s: float = 0.0,
                 on_frame: Optional[Callable[["Pipeline", Frame], None]] = None, plot_frames: int = 5000,
                 source_sinks: Optional[Sequence[Sequence[Any]]] = None, workers: Optional[Sequence[Backend]] = None,
                 batch: int = 1, batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS, threads_per_worker: int = 0) -> None:
        sources = [source] if isinstance(source, Source) else list(source)
        if not sources:
            raise EdgekitError("a stream needs at least one source")
        if queue_size < 1:  # Queue(0) is unbounded
            raise EdgekitError(f"queue_size {queue_size}: each queue holds at least 1 frame")
        if batch < 1:
            raise EdgekitError(f"batch {batch}: at least 1 frame")
        per_source = list(source_sinks) if source_sinks is not None else [[] for _ in sources]
        if len(per_source) != len(sources):
            raise EdgekitError(f"{len(per_source)} lists of sinks for {len(sources)} sources")
        self.feeds = [Feed(k, s, sk) for k, (s, sk) in enumerate(zip(sources, per_source))]
        self.source = sources[0]
        self.model, self.sinks = model, sinks
        self.workers: List[Backend] = list(workers) if workers else [model.opened.backend]
        self.threads_per_worker = threads_per_worker  # as the workers were opened (0: the runtime's default)
        self.batch, self.batch_wait_s = batch, max(0.0, batch_wait_ms) / 1e3
        self.max_frames, self.duration_s = max_frames, duration_s
        self.on_frame = on_frame
        self.live = any(s.info.live for s in sources)
        self.mux = Mux(len(sources), queue_size)
        # preprocess -> infer, infer -> postprocess, postprocess -> sink; the infer queue holds enough frames
        # for every worker to take a whole batch
        self.queues = [queue.Queue(maxsize=max(queue_size, batch * len(self.workers))),
                       queue.Queue(maxsize=queue_size), queue.Queue(maxsize=queue_size)]
        self.stats = StreamStats(plot_frames)
        self.batch_sizes: Counter[int] = Counter()  # batch size -> batches run
        self.worker_frames = [0] * len(self.workers)
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.error: Optional[BaseException] = None
        self._lock = threading.Lock()
        self._take_lock = threading.Lock()  # workers take frames (and sequence numbers) one at a time
        self._seq = 0
        self._infer_ended = False
        self._workers_left = len(self.workers)
        self._in_order = InOrder(lambda f: self._put_blocking(self.queues[1], f, force=True),
                                 limit=4 * batch * len(self.workers) + queue_size)
        self.t_start = self.t_end = 0

    @property
    def counters(self) -> Counters:
        """Every source's frames, together."""
        c = Counters()
        for feed in self.feeds:
            c.frames_in += feed.counters.frames_in
            c.processed += feed.counters.processed
            c.dropped += feed.counters.dropped
        return c

    def _drop(self, f: Frame) -> None:
        with self._lock:
            self.feeds[f.source].counters.dropped += 1

    # --- stages -----------------------------------------------------------------------------
    def _capture(self, feed: Feed, deadline: int) -> None:
        k, live = feed.index, feed.source.info.live
        try:
            frames = feed.source.frames()
            while not self.stop_event.is_set():
                t0 = time.monotonic_ns()
                try:
                    cap = next(frames)
                except StopIteration:
                    feed.stop_reason = feed.stop_reason or "end of stream"
                    break
                f = Frame(feed.counters.frames_in, cap.t_capture, cap.frame, cap.truth,
                          source_name=getattr(cap, "name", None), source=k)
                # capture = reading/decoding the frame (a file) or producing it (synthetic); a camera's
                # wait for its next frame is not pipeline time.
                f.t["capture_start"] = cap.t_work if cap.t_work is not None else min(t0, cap.t_capture)
                f.t["capture_end"] = time.monotonic_ns()
                with self._lock:
                    feed.counters.frames_in += 1
                # a live source drops its oldest frame when behind; a file waits for room, unless the pipeline
                # failed meanwhile (then the frame is counted as dropped)
                left_out = self.mux.put(k, f, live, lambda: self.error is not None)
                if left_out is not None:
                    self._drop(left_out)
                if self.max_frames and feed.counters.frames_in >= self.max_frames:
                    feed.stop_reason = feed.stop_reason or f"--max-frames {self.max_frames} reached"
                    break
                if deadline and time.monotonic_ns() >= deadline:
                    feed.stop_reason = feed.stop_reason or f"--duration {self.duration_s:g} s reached"
                    break
            else:
                feed.stop_reason = feed.stop_reason or self.stop_reason
        except BaseException as e:  # a source that fails mid-run: the frames it delivered are finished and reported
            feed.error = e
            feed.stop_reason = feed.stop_reason or "source failed"
        finally:
            feed.source.close()
            self.mux.close()

    def _put_blocking(self, q: "queue.Queue[Any]", item: Any, force: bool = False) -> bool:
        """Put, waiting for room; gives up (False) only when the pipeline failed and `force` is off."""
        while True:
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self.error is not None and not force:
                    return False

    def _stage(self, name: str, get: Callable[[], Any], qout: "Optional[queue.Queue[Any]]",
               work: Callable[[Frame], None]) -> None:
        failed = False
        while True:
            item = get()
            if item is _END:
                if qout is not None:
                    self._put_blocking(qout, _END, force=True)
                return
            f: Frame = item
            if failed or self.error is not None:
                self._drop(f)  # a stage failed: the frames still in flight are counted as dropped
                continue
            f.t[f"{name}_start"] = time.monotonic_ns()
            try:
                work(f)
            except BaseException as e:
                failed = True
                self._fail(e)
                self._drop(f)
                continue
            f.t[f"{name}_end"] = time.monotonic_ns()
            if qout is not None:
                self._put_blocking(qout, f, force=True)
            else:
                self._finished(f)

    def _finished(self, f: Frame) -> None:
        """A frame through the sink: into the statistics (only the sink thread writes them; the report reads
        them after run())."""
        e2e = self.stats.add(f)
        feed = self.feeds[f.source]
        feed.end_to_end.add(e2e)
        with self._lock:
            feed.counters.processed += 1
        if self.on_frame is not None:
            self.on_frame(self, f)

    def _fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e
        self.stop_event.set()

    # --- the infer stage: workers, batches, frames leaving in order ----------------------------
    def _take(self) -> List[Frame]:
        """Up to `batch` frames, the first waited for; further ones as they are ready (from a live source, for
        up to batch_wait). [] once the stream has ended."""
        q = self.queues[0]
        with self._take_lock:
            if self._infer_ended:
                return []
            item = q.get()
            if item is _END:
                self._infer_ended = True
                return []
            frames = [item]
            deadline = time.monotonic() + (self.batch_wait_s if self.live else 0.0)
            while len(frames) < self.batch:
                wait = deadline - time.monotonic()
                try:
                    item = q.get(timeout=wait) if wait > 0 else q.get_nowait()
                except queue.Empty:
                    break
                if item is _END:
                    self._infer_ended = True
                    break
                frames.append(item)
            for f in frames:
                f.seq, self._seq = self._seq, self._seq + 1
            return frames

    def _infer_worker(self, w: int) -> None:
        backend = self.workers[w]
        limit = backend.batch_limit()
        first = backend.inputs[0].shape[0] if backend.inputs and backend.inputs[0].shape else None
        fixed = first if isinstance(first, int) and first > 1 else 1  # a fixed-batch engine takes this many
        try:
            while True:
                frames = self._take()
                if not frames:
                    return
                if self.error is not None:
                    for f in frames:
                        self._drop(f)
                        self._in_order.done(f.seq, None)
                    continue
                t0 = time.monotonic_ns()
                try:
                    outputs = self._run_batch(backend, frames, limit, fixed)
                except BaseException as e:
                    if not isinstance(e, StopWaiting):  # (stop() ended a wait: its frames are dropped, no failure)
                        self._fail(e)
                    for f in frames:
                        self._drop(f)
                        self._in_order.done(f.seq, None)
                    continue
                t1 = time.monotonic_ns()
                timing = backend.last_timing
                device_ms = timing.device_ms
                parts = (timing.h2d_ms, timing.device_ms, timing.d2h_ms)
                engine_ms = sum(x for x in parts if x is not None) if None not in parts else None
                with self._lock:
                    self.batch_sizes[len(frames)] += 1
                    self.worker_frames[w] += len(frames)
                for i, f in enumerate(frames):
                    f.t["infer_start"], f.t["infer_end"] = t0, t1
                    f.output, f.batch_index = outputs, i
                    f.device_ms, f.engine_ms = device_ms, engine_ms
                    f.tensor = None  # free it early: only the outputs travel on
                    self._in_order.done(f.seq, f)
        finally:
            with self._lock:
                self._workers_left -= 1
                last = self._workers_left == 0
            if last:
                self._put_blocking(self.queues[1], _END, force=True)

    @staticmethod
    def _run_batch(backend: Backend, frames: List[Frame], limit: Optional[int], fixed: int) -> Dict[str, np.ndarray]:
        tensors = [f.tensor for f in frames]
        assert all(t is not None for t in tensors)
        if limit is not None and len(tensors) > limit:
            raise EdgekitError(f"a batch of {len(tensors)} frames: this engine takes at most {limit}")
        if fixed > len(tensors):  # a fixed-batch engine: fill it up, the extra rows are ignored
            tensors += [tensors[-1]] * (fixed - len(tensors))
        x = tensors[0] if len(tensors) == 1 else np.concatenate(tensors, axis=0)
        return backend.infer([x])

    # --- work of each stage -----------------------------------------------------------------
    def _preprocess(self, f: Frame) -> None:
        f.tensor, f.transform = self.model.preprocess(f.image)

    def _post(self, f: Frame) -> None:
        assert f.output is not None and f.transform is not None
        f.result = self.model.decode(f.output, f.transform, f.batch_index)
        f.output = None

    def _sink(self, f: Frame) -> None:
        for s in self.sinks:
            s.write(f)
        for s in self.feeds[f.source].sinks:
            s.write(f)

    # --- run --------------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop_event.set()
        for w in self.workers:  # a worker waiting for a lost server gives up now, not after its back-off
            w.interrupt()

    def run(self) -> None:
        """Run to the end of every stream (or stop()); in-flight frames are finished before returning."""
        self.t_start = time.monotonic_ns()
        q = self.queues
        deadline = self.t_start + int(self.duration_s * 1e9) if self.duration_s else 0
        work: List[Any] = [(self._capture, (feed, deadline)) for feed in self.feeds]
        work += [(self._stage, ("preprocess", self.mux.get, q[0], self._preprocess))]
        work += [(self._infer_worker, (w,)) for w in range(len(self.workers))]
        work += [(self._stage, ("postprocess", q[1].get, q[2], self._post)),
                 (self._stage, ("sink", q[2].get, None, self._sink))]
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
        if not self.stop_reason:
            reasons = {feed.stop_reason for feed in self.feeds}
            self.stop_reason = reasons.pop() if len(reasons) == 1 else "every source ended (see each source)"
        failed = [feed.error for feed in self.feeds if feed.error is not None]
        if self.error is None and failed:
            self.error = failed[0]
