"""Streaming latency statistics: bucketed percentiles against numpy's, constant memory, and a real pipeline's
report built from them (issue 15: run-stream grew 1.8 KB of RSS per frame while it kept every frame)."""

import tracemalloc

import numpy as np
import pytest

from edgekit.runtime.api import Model
from edgekit.runtime.measure.stats import LatencyHistogram, summarize
from edgekit.runtime.opening import open_model
from edgekit.runtime.stream import report
from edgekit.runtime.stream.pipeline import Pipeline
from edgekit.runtime.stream.sources import open_source

QS = (50.0, 90.0, 99.0, 99.9, 100.0)
TOLERANCE = LatencyHistogram.RELATIVE_ERROR + 1e-9  # a value on a bucket edge may round to its neighbour
rng = np.random.default_rng(0)


def histogram(values) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.add(float(v))
    return h


def assert_matches_numpy(values, h: LatencyHistogram) -> None:
    got, exact = h.summary(QS), summarize(list(values), QS)
    assert got.keys() == exact.keys()
    assert got["count"] == exact["count"] and got["max"] == exact["max"]
    for k in ("mean", "std", "cv"):
        assert got[k] == pytest.approx(exact[k], rel=1e-9, abs=1e-12), k
    for q in QS:
        k = f"p{q:g}"
        assert abs(got[k] - exact[k]) <= TOLERANCE * exact[k], (k, got[k], exact[k])


@pytest.mark.parametrize("values", [
    rng.uniform(0.5, 40.0, 20_000),
    rng.lognormal(1.0, 1.0, 20_000),
    np.concatenate([rng.normal(4.0, 0.3, 9_000), rng.normal(90.0, 8.0, 1_000)]),  # fast path + stalls
    np.full(500, 3.3),
    np.array([7.25]),
], ids=["uniform", "lognormal", "bimodal", "constant", "single"])
def test_percentiles_within_the_bucket_error_of_numpy(values):
    assert_matches_numpy(values, histogram(values))


def test_values_outside_the_bucket_range_clamp_and_keep_the_exact_max():
    # below 1 µs (a zero wait included) and above an hour: read back as the exact min and max
    values = np.array([0.0, 1e-5, 2e-4, 5.0, 6.0, 7.2e6, 9e6])
    s = histogram(values).summary((10.0, 90.0))
    assert s["max"] == 9e6 and s["count"] == 7
    exact = summarize(values.tolist(), (10.0, 90.0))
    assert s["p50"] == pytest.approx(exact["p50"], rel=TOLERANCE)
    assert 0.0 <= s["p10"] <= 2e-4 and 7.2e6 <= s["p90"] <= 9e6


def test_merge_equals_adding_everything():
    a_values, b_values = rng.lognormal(0.5, 0.8, 3_000), rng.uniform(10, 200, 1_000)
    merged = histogram(a_values)
    merged.merge(histogram(b_values))
    merged.merge(LatencyHistogram())  # an empty one changes nothing
    both = histogram(np.concatenate([a_values, b_values]))
    assert np.array_equal(merged.counts, both.counts)
    assert merged.summary(QS) == pytest.approx(both.summary(QS), rel=1e-9)
    assert LatencyHistogram().summary() == {"count": 0}


def test_memory_does_not_grow_with_the_count():
    h = histogram([1.0])
    nbytes = h.nbytes
    values = rng.lognormal(1.0, 1.0, 100_000).tolist()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for v in values:
        h.add(v)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert h.nbytes == nbytes and h.count == 100_001
    assert grown < 1024, grown  # a kept list of the values would be 800 KB


def test_pipeline_report_from_streaming_stats(det_engine, tiny_synth):
    """More frames than the plot ring: the report counts every processed frame, the ring stays bounded and
    p50 matches the exact p50 of the latencies the sink saw."""
    seen = []
    model = Model(open_model(det_engine, pipelined=True))
    try:
        # a looped file: not live, so every frame is processed and the counts are known
        source = open_source(str(tiny_synth / "videos" / "stream_00.mp4"), loop=True)
        p = Pipeline(source, model, [], max_frames=300, plot_frames=50,
                     on_frame=lambda _, f: seen.append(
                         ((f.t["sink_end"] - f.t_capture) / 1e6, (f.t["infer_end"] - f.t["infer_start"]) / 1e6)))
        p.run()
    finally:
        model.close()
    r = report.build(p, {})
    c = r["frames"]
    assert c == {"in": 300, "processed": 300, "dropped": 0, "accounted": True} and len(seen) == 300
    assert r["end_to_end_ms"]["count"] == c["processed"]
    assert all(s["count"] == c["processed"] for s in [*r["stages_ms"].values(), *r["queue_wait_ms"].values()])
    e2e, infer = np.array(seen).T
    assert list(p.stats.recent_end_to_end_ms) == e2e[-50:].tolist()
    assert r["latency_stats"]["cdf_plot_frames"] == 50
    for got, exact in ((r["end_to_end_ms"], e2e), (r["stages_ms"]["infer"], infer)):
        assert abs(got["p50"] - np.percentile(exact, 50)) <= TOLERANCE * np.percentile(exact, 50)
        assert got["max"] == exact.max()
    assert f"the CDF plot shows the last 50 of {c['processed']} frames" in report.markdown(r)
