"""edgekit.tegra against recorded Jetson output (tests/data/jetson/, sources in its README)."""

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import List

import pytest

from edgekit.runtime.jetson import tegra
from edgekit.runtime.jetson.tegra import TegraSample, TegrastatsSampler, input_power_mw, parse_line, summarize

DATA = Path(__file__).parent / "data" / "jetson"


def lines(name: str) -> List[str]:
    return [ln for ln in (DATA / name).read_text().splitlines() if ln.strip()]


def samples(name: str) -> List[TegraSample]:
    return [parse_line(ln) for ln in lines(name)]


def offline(s: TegraSample) -> List[int]:
    return [i for i, load in enumerate(s.cpu_loads) if load is None]


# --- tegrastats lines -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("tegrastats_*.txt")))
def test_every_recorded_line_parses(name):
    for s in samples(name):
        assert s.ram_used_mb and s.ram_total_mb and s.ram_used_mb < s.ram_total_mb
        assert s.cpu_loads and len(s.cpu_loads) == len(s.cpu_mhz)
        assert s.gpu_load is not None
        assert s.temps_c and all(-40 < t < 130 for t in s.temps_c.values())


def test_agx_xavier_jetpack4_sub_rails_and_no_input_rail():
    s = samples("tegrastats_agx_xavier_jp4.2.txt")[0]
    assert s.rails_mw == {"GPU": 463, "CPU": 618, "SOC": 2936, "CV": 0, "VDDRQ": 309, "SYS5V": 3306}
    assert input_power_mw(s) is None  # JetPack 4 on AGX Xavier prints no whole-module rail
    assert len(s.cpu_loads) == 8 and offline(s) == [] and s.cpu_mhz[0] == 1190
    assert (s.gpu_load, s.gpu_mhz) == (0, None)  # "GR3D_FREQ 0%" with no clock
    assert s.temps_c["cpu"] == 31.5 and s.temps_c["tdiode"] == 32
    assert "pmic" not in s.temps_c  # PMIC@100C is a placeholder


def test_xavier_nx_jetpack4_rails_without_unit():
    s = samples("tegrastats_xavier_nx_jp4.x.txt")[0]
    assert input_power_mw(s) == 6140  # "VDD_IN 6140/5510": instantaneous, not the average
    assert s.rails_mw["VDD_CPU_GPU_CV"] == 2706
    assert (s.gpu_load, s.gpu_mhz) == (0, 1109)
    assert s.cpu_loads == [47, 23, 32, 22, 31, 96]
    assert (s.emc_load, s.emc_mhz) == (2, 1600)
    assert s.temps_c["gpu"] == 31.5


def test_xavier_nx_jetpack5_milliwatt_rails_and_bracketed_gpu_clock():
    s = samples("tegrastats_xavier_nx_jp5.1.2.txt")[0]
    assert input_power_mw(s) == 2763
    assert s.rails_mw == {"VDD_IN": 2763, "VDD_CPU_GPU_CV": 650, "VDD_SOC": 650}
    assert (s.gpu_load, s.gpu_mhz) == (0, 114)  # "GR3D_FREQ 0%@[114]"
    assert len(s.cpu_loads) == 6 and s.cpu_mhz[0] == 1397
    assert s.temps_c["cpu"] == 46.5 and "pmic" not in s.temps_c


def test_nano_pom_input_rail():
    s = samples("tegrastats_nano_jp4.6.1.txt")[0]
    assert input_power_mw(s) == 1750  # POM_5V_IN
    assert s.rails_mw["POM_5V_CPU"] == 366
    assert (s.gpu_load, s.gpu_mhz) == (0, 76)
    assert s.cpu_loads == [5, 4, 3, 6] and s.temps_c["gpu"] == 40


def test_tx2_offline_cores():
    first, second = samples("tegrastats_tx2_jp4.6.txt")
    assert len(first.cpu_loads) == 6 and offline(first) == [1, 2]  # "CPU [3%@345,off,off,...]"
    assert first.cpu_mhz == [345, None, None, 345, 345, 345]
    assert first.cpu_loads[0] == 3 and second.cpu_loads[0] == 2
    assert first.rails_mw == {} and input_power_mw(first) is None
    assert first.temps_c["bcpu"] == 50.5


def test_agx_orin_jetpack5_drops_sentinels_and_unconnected_rails():
    s = samples("tegrastats_agx_orin_jp5.1.txt")[0]
    assert s.rails_mw == {"VDD_GPU_SOC": 2399, "VDD_CPU_CV": 400, "VIN_SYS_5V0": 4032, "VDDQ_VDD2_1V8AO": 301}
    assert input_power_mw(s) is None  # AGX Orin has no module input rail
    assert not {"gpu", "cv0", "cv1", "cv2"} & set(s.temps_c)  # -256C: zones of power-gated engines
    assert s.temps_c["tj"] == 42.593 and s.temps_c["tboard"] == 32
    assert (s.gpu_load, s.gpu_mhz) == (0, 0)  # "GR3D_FREQ 0%@0", not GR3D2_FREQ
    assert len(s.cpu_loads) == 12 and offline(s) == []
    assert s.ram_total_mb == 62795


def test_agx_orin_jetpack6_lowercase_zones_and_per_gpc_clocks():
    first, second, third = samples("tegrastats_agx_orin_jp6.2.1.txt")
    assert first.rails_mw == {"VDD_GPU_SOC": 2412, "VDD_CPU_CV": 1607, "VIN_SYS_5V0": 4707}
    assert second.rails_mw["VIN_SYS_5V0"] == 4607 and third.rails_mw["VIN_SYS_5V0"] == 4707
    assert (first.gpu_load, first.gpu_mhz) == (0, 0)  # "GR3D_FREQ 0%@[0,0]"
    assert first.temps_c["tj"] == 52.562 and "TJ" not in first.temps_c
    assert len(first.cpu_loads) == 12 and first.cpu_loads[4] == 46 and first.cpu_mhz[0] == 2188
    assert (first.emc_load, first.emc_mhz) == (3, 2133)


def test_orin_nx_jetpack6_under_load():
    s = samples("tegrastats_orin_nx_8gb_jp6.txt")[0]
    assert input_power_mw(s) == 17946
    assert (s.gpu_load, s.gpu_mhz) == (84, 713)
    assert s.cpu_loads == [97, 95, 95, 91, 88, 93] and s.cpu_mhz[-1] == 247
    assert (s.emc_load, s.emc_mhz) == (18, 3199)
    assert s.temps_c["tj"] == 65.562 and s.temps_c["gpu"] == 63.5
    assert (s.ram_used_mb, s.ram_total_mb) == (6982, 7620)


def test_other_printed_forms():
    """Forms NVIDIA documents but the recordings lack: one clock for all cores, an EMC clock without load,
    a per-GPC clock array with a real load, and JetPack 7's extra average on rails and temperatures."""
    s = parse_line("RAM 3468/3983MB (lfb 48x4MB) CPU [17%,off,29%,5%]@408 EMC_FREQ @2133 GR3D_FREQ 12%@[1300,1100] "
                   "cpu@52.968C/52.968C VDD_GPU_SOC 5139mW/5139mW/5139mW")
    assert s.cpu_loads == [17, None, 29, 5] and s.cpu_mhz == [408, None, 408, 408]
    assert (s.emc_load, s.emc_mhz) == (None, 2133)
    assert (s.gpu_load, s.gpu_mhz) == (12, 1300)
    assert s.temps_c == {"cpu": 52.968} and s.rails_mw == {"VDD_GPU_SOC": 5139}


@pytest.mark.parametrize("text", ["", "hello world", "NVPM WARN: fan mode is not set!",
                                  "tegrastats: command not found", "RAM is low"])
def test_garbage_is_not_a_tegrastats_line(text):
    with pytest.raises(ValueError, match="not a tegrastats line"):
        parse_line(text)


# --- summaries ------------------------------------------------------------------------------------------------

def test_summary_of_agx_orin_run():
    s = summarize(samples("tegrastats_agx_orin_jp6.2.1.txt"), seconds=3.0)
    assert s.samples == 3 and s.bad_lines == 0
    assert s.mean_power_mw["VIN_SYS_5V0"] == pytest.approx((4707 + 4607 + 4707) / 3)
    assert s.mean_power_mw["VDD_GPU_SOC"] == 2412 and s.max_power_mw["VIN_SYS_5V0"] == 4707
    assert s.input_power_mean_mw is None and s.energy_per_frame_mj(90) is None
    assert s.gpu_load_mean == 0 and s.emc_load_mean == pytest.approx((3 + 3 + 2) / 3)
    assert s.max_temps_c["tj"] == 52.562
    assert s.throttling == []


def test_energy_per_frame_by_hand():
    # 30 fps for 10 s on the busy Orin NX: 17946 mW x 10 s / 300 frames = 598.2 mJ per frame
    busy = samples("tegrastats_orin_nx_8gb_jp6.txt") * 3
    s = summarize(busy, seconds=10.0)
    assert s.input_power_mean_mw == 17946
    assert s.energy_per_frame_mj(300) == pytest.approx(598.2)
    assert s.energy_per_frame_mj(0) is None
    assert s.cpu_load_mean == pytest.approx((97 + 95 + 95 + 91 + 88 + 93) / 6)
    d = s.to_dict()
    assert d["input_power_mean_mw"] == 17946 and d["samples"] == 3 and d["throttling"] == []


def test_input_power_mean_skips_samples_without_an_input_rail():
    # Xavier NX on JetPack 5 and 4: (2763 + 6140) / 2 mW; the TX2 line prints no rail and does not count as 0.
    mixed = samples("tegrastats_xavier_nx_jp5.1.2.txt") + samples("tegrastats_xavier_nx_jp4.x.txt")
    mixed += samples("tegrastats_tx2_jp4.6.txt")[:1]
    s = summarize(mixed, seconds=2.0, bad_lines=1)
    assert s.input_power_mean_mw == pytest.approx(4451.5)
    assert s.energy_per_frame_mj(10) == pytest.approx(4451.5 * 2.0 / 10)
    assert s.bad_lines == 1


def test_offline_cores_are_not_counted_as_idle():
    s = summarize(samples("tegrastats_tx2_jp4.6.txt"), seconds=2.0)
    assert s.cpu_load_mean == pytest.approx((3 + 0 + 1 + 1 + 2 + 1 + 1 + 0) / 8)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("tegrastats_*.txt")))
def test_recorded_runs_are_not_flagged(name):
    assert summarize(samples(name), seconds=1.0).throttling == []


def test_hot_sample_is_flagged():
    normal = samples("tegrastats_orin_nx_8gb_jp6.txt")[0]
    hot = dataclasses.replace(normal, temps_c={**normal.temps_c, "tj": 99.5})
    reasons = summarize([normal, hot], seconds=1.0).throttling
    assert len(reasons) == 1 and reasons[0].startswith("tj reached 99.5 C")


def test_gpu_clock_drop_under_load_is_flagged():
    busy = samples("tegrastats_orin_nx_8gb_jp6.txt")[0]  # GPU 84% at 713 MHz
    slowed = dataclasses.replace(busy, gpu_mhz=612.0)  # 14% lower, still loaded
    reasons = summarize([busy, busy, slowed], seconds=1.0).throttling
    assert reasons == ["GPU clock fell from 713 to 612 MHz while loaded (>= 50%)"]
    # the same clock step at idle is DVFS, not throttling
    idle = [dataclasses.replace(busy, gpu_load=3.0), dataclasses.replace(slowed, gpu_load=3.0)]
    assert summarize(idle, seconds=1.0).throttling == []
    # a 5% dip is within the 10% margin
    assert summarize([busy, dataclasses.replace(busy, gpu_mhz=680.0)], seconds=1.0).throttling == []


def test_cpu_clock_drop_under_load_is_flagged():
    busy = samples("tegrastats_orin_nx_8gb_jp6.txt")[0]  # cores at 1984 MHz, ~93% load
    slowed = dataclasses.replace(busy, cpu_mhz=[1497.0] * 6)
    reasons = summarize([busy, slowed], seconds=1.0).throttling
    assert reasons == ["CPU clock fell from 1984 to 1497 MHz while loaded (>= 50%)"]


# --- the sampler, end to end ----------------------------------------------------------------------------------

FAKE_TEGRASTATS = '''#!{python}
"""Stands in for NVIDIA's tegrastats: prints recorded lines every --interval ms until killed."""
import sys, time
interval = float(sys.argv[sys.argv.index("--interval") + 1]) / 1000
lines = open({path!r}).read().splitlines()
for warning in {preamble!r}:
    print(warning, flush=True)
while True:
    for line in lines:
        print(line, flush=True)
        time.sleep(interval)
'''


def fake_tegrastats(tmp_path: Path, monkeypatch, fixture: str, preamble=()) -> None:
    script = tmp_path / "tegrastats"
    script.write_text(FAKE_TEGRASTATS.format(python=sys.executable, path=str(DATA / fixture),
                                             preamble=list(preamble)))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sampler_end_to_end(tmp_path, monkeypatch):
    """The real tegrastats only runs on a Jetson; a small script named tegrastats, first on PATH, prints the
    recorded Xavier NX JetPack 5 line every --interval ms instead, so the subprocess, the reader thread and
    the shutdown are all exercised here."""
    fake_tegrastats(tmp_path, monkeypatch, "tegrastats_xavier_nx_jp5.1.2.txt")
    assert TegrastatsSampler.available()
    sampler = TegrastatsSampler(interval_ms=50).start()
    time.sleep(0.5)
    summary = sampler.stop()
    assert summary.samples > 0 and summary.bad_lines == 0
    assert summary.input_power_mean_mw == 2763
    assert 0.4 < summary.seconds < 5
    assert sampler._proc is not None and sampler._proc.poll() is not None and gone(sampler._proc.pid)
    assert sampler.stop() is summary  # a second stop is harmless


def test_sampler_counts_lines_it_cannot_parse(tmp_path, monkeypatch):
    fake_tegrastats(tmp_path, monkeypatch, "tegrastats_nano_jp4.6.1.txt",
                    preamble=["NVPM WARN: fan mode is not set!", "some other noise"])
    with TegrastatsSampler(interval_ms=50) as sampler:
        time.sleep(0.4)
    assert sampler.summary is not None
    assert sampler.summary.bad_lines == 2 and sampler.summary.samples > 0
    assert sampler.summary.input_power_mean_mw == 1750


def test_sampler_stop_after_the_process_died(tmp_path, monkeypatch):
    script = tmp_path / "tegrastats"
    script.write_text(f"#!{sys.executable}\nprint({lines('tegrastats_nano_jp4.6.1.txt')[0]!r})\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    sampler = TegrastatsSampler(interval_ms=50).start()
    assert sampler._proc is not None
    sampler._proc.wait(timeout=10)
    summary = sampler.stop()
    assert summary.samples == 1 and summary.input_power_mean_mw == 1750


def test_sampler_absent_tool():
    assert not TegrastatsSampler.available("edgekit-no-such-tegrastats")


# --- nv_tegra_release, nvpmodel, jetson_clocks ----------------------------------------------------------------

@pytest.mark.parametrize("name, version, board, jetpack", [
    ("nv_tegra_release_r35.4.1.txt", (35, 4, 1), "t186ref", "5.1.2"),
    ("nv_tegra_release_r36.4.0.txt", (36, 4, 0), "generic", "6.1"),
    ("nv_tegra_release_r36.4.3.txt", (36, 4, 3), "generic", "6.2"),
    ("nv_tegra_release_r36.4.4.txt", (36, 4, 4), "generic", "6.2.1"),
])
def test_nv_tegra_release(name, version, board, jetpack):
    release = tegra.parse_nv_tegra_release((DATA / name).read_text())
    assert (release.major, release.minor, release.patch) == version
    assert release.board == board and release.jetpack == jetpack
    assert str(release) == f"L4T R{version[0]}.{version[1]}.{version[2]} (JetPack {jetpack})"


def test_unknown_release_has_no_jetpack():
    release = tegra.parse_nv_tegra_release("# R99 (release), REVISION: 1.0, GCID: 1, BOARD: generic")
    assert release.jetpack is None and str(release) == "L4T R99.1.0"


@pytest.mark.parametrize("text", ["", "garbage", "R35 release 4.1", "PRETTY_NAME=\"Ubuntu 22.04.5 LTS\""])
def test_nv_tegra_release_garbage(text):
    with pytest.raises(ValueError, match="not an nv_tegra_release file"):
        tegra.parse_nv_tegra_release(text)


def test_read_l4t_release(tmp_path):
    assert tegra.read_l4t_release(str(tmp_path / "absent")) is None
    path = tmp_path / "nv_tegra_release"
    path.write_text((DATA / "nv_tegra_release_r36.4.4.txt").read_text())
    assert str(tegra.read_l4t_release(str(path))) == "L4T R36.4.4 (JetPack 6.2.1)"


@pytest.mark.parametrize("name, expected", [
    ("nvpmodel_agx_orin_jp6.2.txt", ("MODE_30W", 2)),
    ("nvpmodel_agx_orin_r36.3.txt", ("MAXN", 0)),
    ("nvpmodel_agx_xavier_jp4.txt", ("MAXN", 0)),  # "NV Fan Mode:cool" comes first
    ("nvpmodel_nano_jp4.2_nosudo.txt", ("5W", 1)),  # NVPM ERROR lines follow without sudo
])
def test_nvpmodel_query(name, expected):
    assert tegra.parse_nvpmodel_query((DATA / name).read_text()) == expected


def test_nvpmodel_query_garbage():
    assert tegra.parse_nvpmodel_query("nvpmodel: command not found") == (None, None)


@pytest.mark.parametrize("name, state", [
    ("jetson_clocks_show_agx_orin_jp5.1.txt", "off"),
    ("jetson_clocks_show_tx1_l4t28.1.txt", "on"),
])
def test_jetson_clocks_show(name, state):
    assert tegra.parse_jetson_clocks_show((DATA / name).read_text()) == state


def test_jetson_clocks_show_garbage():
    assert tegra.parse_jetson_clocks_show("Error: Run jetson_clocks as root") is None


def test_tools_absent_off_a_jetson(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert tegra.power_mode() is None and tegra.jetson_clocks_state() is None


def test_sampler_memory_is_bounded_on_a_long_run(tmp_path, monkeypatch):
    """A day at 100 ms is 864000 lines: past max_samples the sampler thins what it keeps evenly instead of
    growing, and the summary is still the run's."""
    fake_tegrastats(tmp_path, monkeypatch, "tegrastats_xavier_nx_jp5.1.2.txt")
    with TegrastatsSampler(interval_ms=1, max_samples=8) as sampler:
        deadline = time.time() + 20
        while sampler._lines < 40 and time.time() < deadline:
            time.sleep(0.05)
    assert sampler._lines >= 40
    assert sampler.summary is not None and 4 <= sampler.summary.samples <= 8
    assert sampler.summary.input_power_mean_mw == 2763
