"""Jetson text formats: tegrastats lines, /etc/nv_tegra_release, `nvpmodel -q` and `jetson_clocks --show`.

Standard library only, so the runtime side can use it on any JetPack's Python (3.8 on JetPack 5). The formats
differ between releases; tests/data/jetson/ holds recorded examples (and where each came from) for every form
handled here:

* power rails print as ``NAME cur/avg`` (JetPack 4, milliwatts without a unit) or ``NAME curmW/avgmW``
  (JetPack 5 and later); JetPack 7 appends a third value. The first number is the instantaneous reading.
* ``GR3D_FREQ`` prints as ``0%``, ``0%@1109``, ``0%@[114]`` or, with one value per GPC, ``0%@[0,0]``.
* ``CPU [...]`` lists one ``load%@MHz`` per core, or ``off`` for a core the power mode switched off.
* temperatures print as ``name@45.5C``; JetPack 6 lower-cases the zone names.
"""

import dataclasses
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

# Software-throttle thresholds (degrees C) of the two generations edgekit targets, from their device trees:
#  * Orin (T234): the `*-sw-throttle` passive trips sit at 99.0 (software shutdown at 104.5) in every SoC zone,
#    NVIDIA's "arm64: tegra: Add thermal support for Tegra234" patch (linux-tegra, 2023-01-24).
#  * Xavier (T194): the CPU critical trip of the AGX Xavier developer kit is 96.5, mainline Linux
#    arch/arm64/boot/dts/nvidia/tegra194-p2972-0000.dts (its GPU zone trips at 99.0).
# One threshold for both: the lower one, so a Xavier run is flagged before it throttles and an Orin run
# slightly early (a warning, not a measurement of throttling).
THROTTLE_TEMP_C = 96.5

# A clock more than this fraction below the first clock seen under load counts as throttled.
_CLOCK_DROP = 0.10
_LOADED_PCT = 50.0

# Temperatures below this are sentinels, not readings: Orin prints -256C for the CV and GPU zones while those
# engines are power-gated (JetPack 5), and some older releases print -45C/-51C for zones they cannot read.
_MIN_VALID_TEMP_C = -40.0
# PMIC@100C (Nano, TX2, Xavier) and PMIC@50C are fixed placeholders, not a measured temperature.
_IGNORED_TEMPS = frozenset({"pmic"})
# "NC" rails are INA3221 channels that are not connected (AGX Orin on JetPack 5 prints two of them).
_IGNORED_RAILS = frozenset({"NC"})

_RAIL_RE = re.compile(r"(?<![\w/])([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/\d+(?:mW)?(?:/\d+(?:mW)?)?(?=\s|$)")
_TEMP_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAM_RE = re.compile(r"\bRAM (\d+)/(\d+)MB")
_CPU_RE = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
_CORE_RE = re.compile(r"^(\d+)%(?:@(\d+))?$")
_GR3D_RE = re.compile(r"\bGR3D_FREQ (?:(\d+)%)?(?:@\[([\d,]+)\]|@(\d+))?")
_EMC_RE = re.compile(r"\bEMC_FREQ (?:(\d+)%)?(?:@(\d+))?")


@dataclass
class TegraSample:
    """One parsed tegrastats line."""

    rails_mw: Dict[str, float]
    gpu_load: Optional[float]
    gpu_mhz: Optional[float]
    cpu_loads: List[Optional[float]]
    cpu_mhz: List[Optional[float]]
    emc_load: Optional[float]
    emc_mhz: Optional[float]
    ram_used_mb: Optional[float]
    ram_total_mb: Optional[float]
    temps_c: Dict[str, float]


def parse_line(line: str) -> TegraSample:
    """Parse one tegrastats line; ValueError when it holds no field tegrastats prints."""
    cpu_loads, cpu_mhz = _cpu(line)
    gpu_load, gpu_mhz = _gr3d(line)
    emc_load, emc_mhz = _emc(line)
    ram = _RAM_RE.search(line)
    sample = TegraSample(
        rails_mw=_rails(line), gpu_load=gpu_load, gpu_mhz=gpu_mhz, cpu_loads=cpu_loads, cpu_mhz=cpu_mhz,
        emc_load=emc_load, emc_mhz=emc_mhz, ram_used_mb=float(ram.group(1)) if ram else None,
        ram_total_mb=float(ram.group(2)) if ram else None, temps_c=_temps(line))
    if not (ram or cpu_loads or sample.rails_mw or sample.temps_c or _GR3D_RE.search(line)
            or _EMC_RE.search(line)):
        raise ValueError(f"not a tegrastats line: {line.strip()[:80]!r}")
    return sample


def _rails(line: str) -> Dict[str, float]:
    rails: Dict[str, float] = {}
    for name, current in _RAIL_RE.findall(line):
        if name not in _IGNORED_RAILS:
            rails.setdefault(name, float(current))
    return rails


def _temps(line: str) -> Dict[str, float]:
    temps: Dict[str, float] = {}
    for name, value in _TEMP_RE.findall(line):
        key, celsius = name.lower(), float(value)
        if key not in _IGNORED_TEMPS and celsius > _MIN_VALID_TEMP_C:
            temps.setdefault(key, celsius)
    return temps


def _cpu(line: str) -> Tuple[List[Optional[float]], List[Optional[float]]]:
    m = _CPU_RE.search(line)
    if not m:
        return [], []
    loads: List[Optional[float]] = []
    mhz: List[Optional[float]] = []
    shared = float(m.group(2)) if m.group(2) else None  # the old "CPU [x%,y%]@MHz" form
    for entry in (e.strip() for e in m.group(1).split(",")):
        core = _CORE_RE.match(entry)
        loads.append(float(core.group(1)) if core else None)  # "off" (or anything unknown): core offline
        mhz.append((float(core.group(2)) if core.group(2) else shared) if core else None)
    return loads, mhz


def _gr3d(line: str) -> Tuple[Optional[float], Optional[float]]:
    m = _GR3D_RE.search(line)
    if not m:
        return None, None
    load = float(m.group(1)) if m.group(1) else None
    if m.group(2):  # one clock per GPC: report the fastest
        return load, max(float(v) for v in m.group(2).split(",") if v)
    return load, float(m.group(3)) if m.group(3) else None


def _emc(line: str) -> Tuple[Optional[float], Optional[float]]:
    m = _EMC_RE.search(line)
    if not m:
        return None, None
    return (float(m.group(1)) if m.group(1) else None), (float(m.group(2)) if m.group(2) else None)


def input_power_mw(s: TegraSample) -> Optional[float]:
    """The whole-module input rail (VDD_IN, or POM_5V_IN on Nano/TX1-era boards); None where none is printed.

    AGX Xavier on JetPack 4 and AGX Orin print only sub-rails (GPU/CPU/SOC..., VDD_GPU_SOC/VDD_CPU_CV/
    VIN_SYS_5V0): their sum is not the module input, so there is no input power for them.
    """
    for name in ("VDD_IN", "POM_5V_IN"):
        if name in s.rails_mw:
            return s.rails_mw[name]
    return None


@dataclass
class PowerSummary:
    """What a run's tegrastats samples add up to."""

    samples: int
    bad_lines: int
    seconds: float
    mean_power_mw: Dict[str, float]
    max_power_mw: Dict[str, float]
    input_power_mean_mw: Optional[float]
    gpu_load_mean: Optional[float]
    cpu_load_mean: Optional[float]
    emc_load_mean: Optional[float]
    max_temps_c: Dict[str, float]
    throttling: List[str] = field(default_factory=list)

    def energy_per_frame_mj(self, frames: int) -> Optional[float]:
        """Mean input power x duration / frames (mW x s = mJ); None without an input rail or frames."""
        if self.input_power_mean_mw is None or frames <= 0:
            return None
        return self.input_power_mean_mw * self.seconds / frames

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def summarize(samples: List[TegraSample], seconds: float, bad_lines: int = 0) -> PowerSummary:
    """Means, maxima and throttling signs over a run's samples."""
    rails: Dict[str, List[float]] = {}
    temps: Dict[str, float] = {}
    for s in samples:
        for name, mw in s.rails_mw.items():
            rails.setdefault(name, []).append(mw)
        for name, celsius in s.temps_c.items():
            temps[name] = max(celsius, temps.get(name, celsius))
    inputs = [p for p in (input_power_mw(s) for s in samples) if p is not None]
    return PowerSummary(
        samples=len(samples), bad_lines=bad_lines, seconds=seconds,
        mean_power_mw={k: _mean(v) for k, v in rails.items()}, max_power_mw={k: max(v) for k, v in rails.items()},
        input_power_mean_mw=_mean(inputs) if inputs else None,
        gpu_load_mean=_mean_or_none([s.gpu_load for s in samples]),
        cpu_load_mean=_mean_or_none([load for s in samples for load in s.cpu_loads]),
        emc_load_mean=_mean_or_none([s.emc_load for s in samples]),
        max_temps_c=temps, throttling=_throttling(samples, temps))


def _mean(values: List[float]) -> float:
    return sum(values) / len(values)


def _mean_or_none(values: List[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return _mean(present) if present else None


def _throttling(samples: List[TegraSample], max_temps: Dict[str, float]) -> List[str]:
    reasons = [f"{name} reached {celsius:.1f} C (software throttling starts near {THROTTLE_TEMP_C} C)"
               for name, celsius in sorted(max_temps.items()) if celsius >= THROTTLE_TEMP_C]
    gpu = [(s.gpu_load, s.gpu_mhz) for s in samples]
    cpu = [(_mean_or_none(s.cpu_loads), _max_or_none(s.cpu_mhz)) for s in samples]
    for unit, series in (("GPU", gpu), ("CPU", cpu)):
        drop = _clock_drop(series)
        if drop:
            reasons.append(f"{unit} clock fell from {drop[0]:.0f} to {drop[1]:.0f} MHz while loaded "
                           f"(>= {_LOADED_PCT:.0f}%)")
    return reasons


def _max_or_none(values: List[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _clock_drop(series: List[Tuple[Optional[float], Optional[float]]]) -> Optional[Tuple[float, float]]:
    """(first, lowest) clock under load when the lowest is >10% below the first; else None.

    Only loaded samples count: an idle clock going down is DVFS saving power, not throttling.
    """
    loaded = [mhz for load, mhz in series if load is not None and load >= _LOADED_PCT and mhz]
    if len(loaded) < 2 or min(loaded[1:]) >= loaded[0] * (1 - _CLOCK_DROP):
        return None
    return loaded[0], min(loaded[1:])


class TegrastatsSampler:
    """Runs `tegrastats --interval MS` as a subprocess and parses its lines in a daemon thread.

    Memory is bounded however long the run: at `max_samples` kept, every other sample is let go and from then
    on only every 2nd (4th, ...) line is kept, so what is summarized stays an evenly spaced sample of the
    whole run (a day at 100 ms is 864000 lines)."""

    def __init__(self, interval_ms: int = 100, command: str = "tegrastats", max_samples: int = 20000) -> None:
        self.interval_ms = interval_ms
        self.command = command
        self.summary: Optional[PowerSummary] = None
        self._proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None
        self._samples: List[TegraSample] = []
        self._max_samples, self._stride, self._lines = max(2, max_samples), 1, 0
        self._bad_lines = 0
        self._lock = threading.Lock()
        self._started = 0.0

    @staticmethod
    def available(command: str = "tegrastats") -> bool:
        return shutil.which(command) is not None

    def start(self) -> "TegrastatsSampler":
        # Without sudo tegrastats still prints RAM, CPU, rails and temperatures; GR3D may be missing.
        self._proc = subprocess.Popen([self.command, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._read, name="tegrastats-reader", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if not line.strip():
                continue
            try:
                sample = parse_line(line)
            except ValueError:
                with self._lock:
                    self._bad_lines += 1  # a warning or a format we do not know: counted, never fatal
                continue
            with self._lock:
                self._lines += 1
                if (self._lines - 1) % self._stride:
                    continue
                self._samples.append(sample)
                if len(self._samples) >= self._max_samples:
                    del self._samples[1::2]
                    self._stride *= 2

    def stop(self) -> PowerSummary:
        """Stop tegrastats (terminate, then kill if it lingers) and summarize what it printed."""
        if self.summary is not None:
            return self.summary
        seconds = time.monotonic() - self._started if self._proc is not None else 0.0
        if self._proc is not None:
            _terminate(self._proc)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        with self._lock:
            self.summary = summarize(list(self._samples), seconds, self._bad_lines)
        return self.summary

    def __enter__(self) -> "TegrastatsSampler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return  # it died on its own (or never ran long): nothing to stop
    proc.terminate()
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=2.0)


# JetPack release of each Jetson Linux (L4T) release, from NVIDIA's JetPack archive
# (https://developer.nvidia.com/embedded/jetpack-archive) and the Jetson Linux release pages it links; the R35.4.1,
# R36.4.3 and R36.4.4 rows also match the nvidia-jetpack packages recorded next to the fixtures in
# tests/data/jetson/. Bug-fix L4T releases shipped without a JetPack of their own are left out (-> None).
_JETPACK = {
    (32, 1, 0): "4.2", (32, 2, 0): "4.2.1", (32, 2, 1): "4.2.2", (32, 2, 3): "4.2.3", (32, 3, 1): "4.3",
    (32, 4, 2): "4.4 DP", (32, 4, 3): "4.4", (32, 4, 4): "4.4.1", (32, 5, 0): "4.5", (32, 5, 1): "4.5.1",
    (32, 6, 1): "4.6", (32, 7, 1): "4.6.1", (32, 7, 2): "4.6.2", (32, 7, 3): "4.6.3", (32, 7, 4): "4.6.4",
    (32, 7, 5): "4.6.5", (32, 7, 6): "4.6.6",
    (34, 1, 0): "5.0 DP", (34, 1, 1): "5.0.1 DP", (35, 1, 0): "5.0.2", (35, 2, 1): "5.1", (35, 3, 1): "5.1.1",
    (35, 4, 1): "5.1.2", (35, 5, 0): "5.1.3", (35, 6, 0): "5.1.4", (35, 6, 1): "5.1.5",
    (36, 2, 0): "6.0 DP", (36, 3, 0): "6.0", (36, 4, 0): "6.1", (36, 4, 3): "6.2", (36, 4, 4): "6.2.1",
}

_RELEASE_RE = re.compile(r"^#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", re.MULTILINE)
_BOARD_RE = re.compile(r"BOARD:\s*([^,\s]+)")


@dataclass
class L4TRelease:
    """The Jetson Linux release /etc/nv_tegra_release names: R35 REVISION 4.1 -> (35, 4, 1)."""

    major: int
    minor: int
    patch: int
    board: str

    @property
    def jetpack(self) -> Optional[str]:
        return _JETPACK.get((self.major, self.minor, self.patch))

    def __str__(self) -> str:
        version = f"L4T R{self.major}.{self.minor}.{self.patch}"
        return f"{version} (JetPack {self.jetpack})" if self.jetpack else version


def parse_nv_tegra_release(text: str) -> L4TRelease:
    """Parse /etc/nv_tegra_release; ValueError when its first line is not '# R<major> (release), REVISION: ...'."""
    m = _RELEASE_RE.search(text)
    if not m:
        raise ValueError(f"not an nv_tegra_release file: {text.strip()[:80]!r}")
    board = _BOARD_RE.search(text[m.start():].splitlines()[0])
    return L4TRelease(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), board.group(1) if board else "")


def read_l4t_release(path: str = "/etc/nv_tegra_release") -> Optional[L4TRelease]:
    """The release this Jetson runs; None off a Jetson (no file, or unreadable). A garbled file raises."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return parse_nv_tegra_release(text)


_POWER_MODE_RE = re.compile(r"NV Power Mode:\s*(\S+)")


def parse_nvpmodel_query(text: str) -> Tuple[Optional[str], Optional[int]]:
    """("MAXN", 0) from `nvpmodel -q`; warning and error lines around it are skipped."""
    m = _POWER_MODE_RE.search(text)
    if not m:
        return None, None
    for line in text[m.end():].splitlines():
        if line.strip().isdigit():  # the mode id is the first all-digit line after the name
            return m.group(1), int(line.strip())
    return m.group(1), None


def power_mode() -> Optional[Dict[str, Any]]:
    """{"mode": name, "id": n} from `nvpmodel -q`; None without nvpmodel or when it fails."""
    # Without root nvpmodel still prints the mode, then errors about files it cannot read (and may exit non-zero).
    done = _run_tool(["nvpmodel", "-q"])
    name, mode_id = parse_nvpmodel_query(done[1]) if done else (None, None)
    return {"mode": name, "id": mode_id} if name else None


_CPU_CLOCK_RE = re.compile(r"^cpu\d+:.*?\bMinFreq=(\d+) MaxFreq=(\d+)", re.MULTILINE)
_GPU_CLOCK_RE = re.compile(r"^GPU MinFreq=(\d+) MaxFreq=(\d+)", re.MULTILINE)


def parse_jetson_clocks_show(text: str) -> Optional[str]:
    """"on" when `jetson_clocks --show` reports CPU and GPU clocks pinned (MinFreq == MaxFreq), else "off".

    That is what jetson_clocks does: it raises every online core's and the GPU's minimum to its maximum (the
    EMC FreqOverride flag is not used: some releases keep the EMC range open while overriding it).
    Offline cores are skipped; None when the text has no CPU or GPU clock line.
    """
    cpus = [(lo, hi) for line, lo, hi in _cpu_clock_lines(text) if "Online=0" not in line]
    gpu = _GPU_CLOCK_RE.search(text)
    if not cpus and not gpu:
        return None
    pinned = all(lo == hi for lo, hi in cpus) and (gpu is None or gpu.group(1) == gpu.group(2))
    return "on" if pinned else "off"


def _cpu_clock_lines(text: str) -> List[Tuple[str, str, str]]:
    return [(m.group(0), m.group(1), m.group(2)) for m in _CPU_CLOCK_RE.finditer(text)]


def jetson_clocks_state() -> Optional[str]:
    """"on"/"off" from `jetson_clocks --show`; None without the tool or when it refuses (it needs root)."""
    done = _run_tool(["jetson_clocks", "--show"])
    return parse_jetson_clocks_show(done[1]) if done and done[0] == 0 else None


def _run_tool(argv: List[str]) -> Optional[Tuple[int, str]]:
    """(exit status, stdout+stderr) of a Jetson tool run for at most 5 s; None when absent or hanging."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.returncode, done.stdout + done.stderr
