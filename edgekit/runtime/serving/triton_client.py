"""A model served by Triton Inference Server as a backend: `run-stream triton://HOST:PORT/MODEL SOURCE` (gRPC, through
tritonclient, the `triton` extra). The pipeline stays local (capture, preprocess, decode, sinks); its inference
workers become clients, each with its own connection and one request in flight, so N workers keep N requests at
the server (whose dynamic batcher may run them together).

The model is one that `edgekit export-triton` wrote: the card comes from its configuration's parameters, and the
engine's inputs and outputs from the server, checked against the card as a local engine is. A server that goes away
is waited for like a lost live source: the request is retried after back-off 0.5, 1, 2, 4, 8 s, `reconnect` times;
then the run ends with exit status 3 and its report. Frames are never lost meanwhile: the request is sent again.

`run_summary()` gives the server's own figures for the report: the change in Triton's statistics of the model over the
run (queue, compute input/infer/output per request, the batch sizes it executed) beside the client's round trip."""

import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError, MissingDependency, SourceFailed
from edgekit.runtime.backends.base import Backend, Capabilities, StopWaiting, TensorSpec, Timing
from edgekit.runtime.card import ModelCard
from edgekit.runtime.manifest import BackendRecord
from edgekit.runtime.serving.triton_repo import CARD_PARAM, ENGINE_PARAM, NUMPY_OF_WIRE, ROLE_PARAM, WIRE_TYPES
from edgekit.runtime.stream import backoff_s
from edgekit.runtime.text import printable

DEFAULT_IN_FLIGHT = 4  # requests at the server at once (one per worker) unless --workers says
_URL = re.compile(r"triton://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})/(?P<model>[A-Za-z0-9_.-]+)"
                  r"(?:/(?P<version>\d+))?/?")
_LOST = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")


def _grpc() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise MissingDependency("tritonclient", "triton") from None
    return grpcclient


@dataclass(frozen=True)
class Address:
    url: str
    host: str
    port: int
    model: str
    version: str  # "" for the server's latest

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


def parse(url: str) -> Address:
    m = _URL.fullmatch(url)
    if not m or not 0 < int(m["port"]) < 65536:
        raise EdgekitError(f"{printable(url)}: not a Triton model address; give triton://HOST:GRPC_PORT/MODEL[/VERSION]")
    return Address(url, m["host"].strip("[]"), int(m["port"]), m["model"], m["version"] or "")


@dataclass
class _Shared:
    """What every worker's connection shares: the server's address, the reconnect budget and its log."""

    address: Address
    reconnect: int
    timeout_s: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    # each time the server went away: for how long ("seconds"; None where it did not come back) and why
    outages: List[Dict[str, Any]] = field(default_factory=list)
    retried_requests: int = 0
    stop: threading.Event = field(default_factory=threading.Event)  # the run stopped: no more waiting
    stats_before: Optional[Dict[str, Any]] = None
    server_version: str = ""
    answered: int = 0  # requests the server answered (it counts at least these among its successes, unless restarted)
    restarted: bool = False  # the server came back with fewer successes than it had answered: a new process


class TritonBackend(Backend):
    """A model on a Triton server; each instance (the opened one and its workers) has its own gRPC connection."""

    name = "triton"
    label = "Triton Inference Server"
    capabilities = Capabilities(precisions=(), file_suffix="", device_label="server", extra="triton")

    @classmethod
    def runtime(cls) -> Any:
        return _grpc()

    @classmethod
    def describe(cls, runtime: Any) -> str:
        import tritonclient

        return f"tritonclient {getattr(tritonclient, '__version__', '?')} (a client: models run on the server)"

    @classmethod
    def version(cls) -> str:
        import tritonclient

        return str(getattr(tritonclient, "__version__", "?"))

    def __init__(self, shared: _Shared, config: Dict[str, Any], inputs: List[TensorSpec],
                 outputs: List[TensorSpec]) -> None:
        self.shared, self.config = shared, config
        self._inputs, self._outputs = inputs, outputs
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self._timing = Timing()
        self._grpc = _grpc()
        self.client = self._grpc.InferenceServerClient(shared.address.target)
        self._requested = [self._grpc.InferRequestedOutput(o.name) for o in outputs]

    # --- run-stream's workers -------------------------------------------------------------------------
    def parallel_plan(self, cores: int) -> Tuple[int, int]:
        return DEFAULT_IN_FLIGHT, 0

    def worker(self, threads: int) -> "Backend":
        return TritonBackend(self.shared, self.config, self._inputs, self._outputs)

    def batch_limit(self) -> Optional[int]:
        if self.max_batch_size > 0:
            return self.max_batch_size
        first = self._inputs[0].shape[0] if self._inputs and self._inputs[0].shape else 1
        return first if isinstance(first, int) and first > 0 else None

    # --- inference ------------------------------------------------------------------------------------
    def infer(self, inputs: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        requests = []
        for spec, x in zip(self._inputs, inputs):
            x = np.ascontiguousarray(x)
            t = self._grpc.InferInput(spec.name, list(x.shape), WIRE_TYPES.get(x.dtype.name, "FP32"))
            t.set_data_from_numpy(x)
            requests.append(t)
        t0 = time.perf_counter()
        result = self._send(requests)
        self._timing = Timing(host_ms=(time.perf_counter() - t0) * 1e3)
        with self.shared.lock:
            self.shared.answered += 1
        return {o.name: result.as_numpy(o.name) for o in self._outputs}

    def _send(self, requests: List[Any]) -> Any:
        a = self.shared.address
        while True:
            try:
                return self.client.infer(a.model, requests, model_version=a.version, outputs=self._requested,
                                         client_timeout=self.shared.timeout_s)
            except self._grpc.InferenceServerException as e:
                # A server going away answers UNAVAILABLE, or while it stops, that the model has no version left:
                # any failure while the model is not ready counts as losing the server.
                if str(e.status()) not in _LOST and _ready(self.client, a):
                    raise EdgekitError(f"{a.url}: the server refused the request: {printable(e.message() or str(e))}"
                                       ) from None
                self._wait_for_server(e)

    def _wait_for_server(self, error: Any) -> None:
        """Back off and reconnect until the model is ready again (the request is then sent again); SourceFailed
        once `reconnect` tries failed. Workers that lost the server together count one outage."""
        a, shared = self.shared.address, self.shared
        lost_at = time.monotonic()
        attempt = 0
        while True:
            if attempt >= shared.reconnect:
                with shared.lock:
                    shared.outages.append({"seconds": None, "error": _short(error)})
                raise SourceFailed(f"{a.url}: the server went away ({_short(error)}) and "
                                   f"{shared.reconnect} reconnect attempt{'s' if shared.reconnect != 1 else ''} "
                                   "failed")
            attempt += 1
            if shared.stop.wait(backoff_s(attempt)):
                raise StopWaiting()
            self.close()
            self.client = self._grpc.InferenceServerClient(a.target)
            if _ready(self.client, a):
                now = time.monotonic()
                with shared.lock:
                    shared.retried_requests += 1
                    last: Dict[str, Any] = shared.outages[-1] if shared.outages else {}
                    new = last.get("_back") is None or last["_back"] < lost_at
                    if new:
                        shared.outages.append({"seconds": round(now - lost_at, 2), "error": _short(error),
                                               "_back": now})
                    else:  # (another worker found the server again after this one lost it: the same outage)
                        last["seconds"] = max(last["seconds"], round(now - lost_at, 2))
                if new:
                    self._note_restart()
                return

    def _note_restart(self) -> None:
        """After an outage: a server that counts fewer successes than it answered before is a new process; the
        report's statistics then start from its start."""
        shared = self.shared
        now = self.statistics()
        known = _ns((shared.stats_before or {}).get("inference_stats"), "success")[0] + shared.answered
        if now is not None and _ns(now.get("inference_stats"), "success")[0] < known:
            with shared.lock:
                shared.restarted, shared.stats_before = True, None

    # --- the server's figures -----------------------------------------------------------------------
    def statistics(self) -> Optional[Dict[str, Any]]:
        a = self.shared.address
        try:
            stats = self.client.get_inference_statistics(a.model, a.version, as_json=True, client_timeout=5)
        except Exception:  # noqa: BLE001  (a server gone at the end: the report says the figures are missing)
            return None
        found = [m for m in stats.get("model_stats", []) if m.get("name") == a.model]
        return found[0] if found else None

    def run_summary(self) -> Optional[Dict[str, Any]]:
        """The server's side of the run: Triton's statistics of the model over the run (all its clients'), the
        reconnects, and what the server is."""
        shared = self.shared
        out: Dict[str, Any] = {"url": shared.address.url, "model": shared.address.model,
                               "server_version": shared.server_version,
                               "reconnects": sum(o["seconds"] is not None for o in shared.outages),
                               "retried_requests": shared.retried_requests,
                               "outages": [{k: v for k, v in o.items() if not k.startswith("_")}
                                           for o in shared.outages],
                               "max_batch_size": self.max_batch_size}
        after = self.statistics()
        out["statistics"] = stats_delta(shared.stats_before, after, shared.restarted) if after is not None else None
        return out

    def interrupt(self) -> None:
        self.shared.stop.set()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # (a connection already gone)
            self.client.close()


def _short(error: Any) -> str:
    text = getattr(error, "message", lambda: None)() or str(error)
    return printable(text.splitlines()[0] if text else type(error).__name__)[:160]


def _ready(client: Any, a: Address) -> bool:
    try:
        return bool(client.is_server_ready(client_timeout=2) and
                    client.is_model_ready(a.model, a.version, client_timeout=2))
    except Exception:  # noqa: BLE001  (not there yet)
        return False


def _ns(d: Optional[Dict[str, Any]], key: str) -> Tuple[int, int]:
    part = (d or {}).get(key) or {}
    return int(part.get("count", 0) or 0), int(part.get("ns", 0) or 0)


def stats_delta(before: Optional[Dict[str, Any]], after: Dict[str, Any], restarted: bool = False) -> Dict[str, Any]:
    """What Triton's statistics of a model (its JSON: inference_stats, batch_stats, execution_count) gained between
    two readings: requests, executions, the mean milliseconds per request of each phase, and the batch sizes the
    server executed (batch size -> executions). A server that `restarted` in between (or whose counts went down)
    gives the figures since it started."""
    restarted = restarted or (before is not None and _ns(after.get("inference_stats"), "success")[0] < _ns(
        before.get("inference_stats"), "success")[0])
    if restarted:
        before = None
    b_inf, a_inf = (before or {}).get("inference_stats", {}), after.get("inference_stats", {})
    phases = {}
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output", "fail"):
        n = _ns(a_inf, key)[0] - _ns(b_inf, key)[0]
        ns = _ns(a_inf, key)[1] - _ns(b_inf, key)[1]
        phases[key] = {"count": n, "mean_ms": round(ns / n / 1e6, 3) if n else None}
    batches: Dict[int, int] = {}  # batch size -> executions
    old = {int(s["batch_size"]): _ns(s, "compute_infer")[0] for s in (before or {}).get("batch_stats", [])}
    for s in after.get("batch_stats", []):
        size = int(s["batch_size"])
        n = _ns(s, "compute_infer")[0] - old.get(size, 0)
        if n:
            batches[size] = n

    def gained(key: str) -> int:
        return int(after.get(key, 0) or 0) - int((before or {}).get(key, 0) or 0)

    return {"restarted": restarted, "requests": phases["success"]["count"], "failed_requests": phases["fail"]["count"],
            "executions": gained("execution_count"),
            "inferences": gained("inference_count"),
            "request_ms": phases["success"]["mean_ms"], "queue_ms": phases["queue"]["mean_ms"],
            "compute_input_ms": phases["compute_input"]["mean_ms"],
            "compute_infer_ms": phases["compute_infer"]["mean_ms"],
            "compute_output_ms": phases["compute_output"]["mean_ms"],
            "batch_sizes": {str(k): v for k, v in sorted(batches.items())}}


def open_triton(url: str, reconnect: int = 3, timeout_s: float = 30.0) -> Any:
    """The served model at `url` as an Opened (edgekit.runtime.opening): its card from the server, its inputs and
    outputs checked against the card. A server that cannot be reached is a one-line SourceFailed (exit status 3)."""
    from edgekit.runtime.opening import Opened, check_card_against_graph

    a = parse(url)
    grpcclient = _grpc()
    client = grpcclient.InferenceServerClient(a.target)
    try:
        if not _ready(client, a):
            live = _call(lambda: client.is_server_live(client_timeout=3))
            if not live:
                raise SourceFailed(f"{url}: no Triton server answers gRPC at {a.target}")
            raise EdgekitError(f"{url}: the server has no model '{printable(a.model)}' ready "
                               f"(ready: {', '.join(_ready_models(client)) or 'none'})")
        config = client.get_model_config(a.model, a.version, as_json=True, client_timeout=10)["config"]
        metadata = client.get_model_metadata(a.model, a.version, as_json=True, client_timeout=10)
        server = client.get_server_metadata(as_json=True, client_timeout=10)
    finally:
        client.close()
    params = config.get("parameters", {})
    if CARD_PARAM not in params:
        hint = (" (an ensemble: give the engine's model, without _ensemble)" if config.get("platform") == "ensemble"
                else "; serve a repository from edgekit export-triton")
        raise EdgekitError(f"{url}: the model's configuration has no edgekit model card ({CARD_PARAM}){hint}")
    card = ModelCard.from_json(params[CARD_PARAM]["string_value"], f"{url}: parameter {CARD_PARAM}")
    try:  # (what the engine is, for the report: nothing where unreadable)
        engine = json.loads(params.get(ENGINE_PARAM, {}).get("string_value", "") or "{}")
    except ValueError:
        engine = {}
    engine = engine if isinstance(engine, dict) else {}
    if config.get("platform") == "ensemble" or params.get(ROLE_PARAM, {}).get("string_value") != "model":
        raise EdgekitError(f"{url}: this is not the engine's model; give the model that export-triton named after "
                           "the card (not _preprocess, _postprocess or _ensemble)")
    batching = int(config.get("max_batch_size", 0)) > 0

    def specs(items: List[Dict[str, Any]]) -> List[TensorSpec]:
        out = []
        for t in items:
            shape = [int(d) for d in t.get("shape", [])]
            dims = tuple(d if d >= 0 else "?" for d in shape)
            dtype = NUMPY_OF_WIRE.get(t["datatype"]) or str(t["datatype"]).lower()
            out.append(TensorSpec(t["name"], dims, dtype))
        return out

    inputs, outputs = specs(metadata.get("inputs", [])), specs(metadata.get("outputs", []))
    if batching:  # the metadata's shapes carry the batch axis as -1
        inputs = [TensorSpec(t.name, ("batch", *t.shape[1:]), t.dtype) for t in inputs]
        outputs = [TensorSpec(t.name, ("batch", *t.shape[1:]), t.dtype) for t in outputs]
    shared = _Shared(a, reconnect, timeout_s, server_version=str(server.get("version", "")))
    backend = TritonBackend(shared, config, inputs, outputs)
    try:
        check_card_against_graph(card, backend, url)
        shared.stats_before = backend.statistics()
    except BaseException:
        backend.close()
        raise
    record = BackendRecord(name=TritonBackend.name, version=f"Triton {shared.server_version}", device=a.target)
    precision = str(engine.get("precision") or "?")
    served_by = engine.get("backend")
    if served_by:
        precision += f" ({served_by} on the server)"
    return Opened(backend, card, None, record, precision, url)


def _call(f: Any) -> Any:
    try:
        return f()
    except Exception:  # noqa: BLE001
        return None


def _ready_models(client: Any) -> List[str]:
    index = _call(lambda: client.get_model_repository_index(as_json=True, client_timeout=3)) or {}
    return [str(m.get("name")) for m in index.get("models", []) if m.get("state") == "READY"][:8]
