"""On a Jetson: the release, power mode and tegrastats as edgekit reads them from the real tools."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.runtime.jetson import tegra

pytestmark = pytest.mark.jetson
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def release():
    r = tegra.read_l4t_release()
    if r is None:
        pytest.skip("not a Jetson (no /etc/nv_tegra_release)")
    return r


def test_release_is_known(release):
    assert release.major in (35, 36, 38) and release.jetpack, str(release)


def test_tegrastats_sampler_reads_power_and_temperatures(release):
    if not tegra.TegrastatsSampler.available():
        pytest.skip("tegrastats not on PATH")
    with tegra.TegrastatsSampler(interval_ms=100) as s:
        time.sleep(1.5)
    summary = s.stop()
    assert summary.samples >= 5 and summary.bad_lines == 0
    assert summary.max_temps_c and summary.cpu_load_mean is not None
    assert summary.mean_power_mw, "tegrastats printed no power rails"


def test_doctor_sees_the_jetson(release):
    r = subprocess.run([sys.executable, "-m", "edgekit", "doctor"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and str(release) in r.stdout


def test_power_script_shows_the_mode(release):
    r = subprocess.run(["bash", str(ROOT / "jetson" / "power.sh"), "show"], capture_output=True, text=True)
    assert r.returncode == 0 and "jetson_clocks:" in r.stdout
