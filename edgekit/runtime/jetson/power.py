"""Power, clocks and thermals for the measuring commands (profile, run-stream): tegrastats sampled during
the run on a Jetson, the nvpmodel mode and jetson_clocks state; nothing (None) elsewhere."""

from typing import Any, Dict, Optional


def jetson_state() -> Optional[Dict[str, Any]]:
    """L4T/JetPack release, nvpmodel mode and jetson_clocks state, where this is a Jetson."""
    from edgekit.runtime.jetson import tegra

    try:
        release = tegra.read_l4t_release()
    except ValueError:  # a garbled release file: measure anyway, without the Jetson section
        return None
    if release is None:
        return None
    return {"l4t": str(release), "jetpack": release.jetpack, "power_mode": tegra.power_mode(),
            "jetson_clocks": tegra.jetson_clocks_state()}


def start_sampler(enabled: bool = True, interval_ms: int = 100) -> Any:
    """A started tegrastats sampler where tegrastats exists (a Jetson); None elsewhere or when not wanted."""
    if not enabled:
        return None
    from edgekit.runtime.jetson import tegra

    return tegra.TegrastatsSampler(interval_ms=interval_ms).start() if tegra.TegrastatsSampler.available() else None


def stop_sampler(sampler: Any, frames: int) -> Optional[Dict[str, Any]]:
    """The run's power summary with the energy per frame (mJ); None without a sampler."""
    if sampler is None:
        return None
    summary = sampler.stop()
    d = summary.to_dict()
    d["energy_per_frame_mj"] = summary.energy_per_frame_mj(frames)
    return d


def markdown_lines(power: Optional[Dict[str, Any]], jetson: Optional[Dict[str, Any]]) -> list:
    lines = []
    if power:
        temps = ", ".join(f"{k} {v:.1f} C" for k, v in power.get("max_temps_c", {}).items())
        lines.append(f"- power (tegrastats, {power['samples']} samples): input {_fmt(power.get('input_power_mean_mw'))}"
                     f" mW mean; energy per frame {_fmt(power.get('energy_per_frame_mj'))} mJ; GPU load "
                     f"{_fmt(power.get('gpu_load_mean'))}%; max temperatures {temps or 'n/a'}")
        if power.get("throttling"):
            lines.append("- THROTTLING: " + "; ".join(power["throttling"]))
    if jetson:
        mode = jetson.get("power_mode") or {}
        lines.append(f"- Jetson: {jetson['l4t']}; nvpmodel {mode.get('mode', '?')} (id {mode.get('id', '?')}); "
                     f"jetson_clocks {jetson.get('jetson_clocks') or 'unknown'}")
    return lines


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.1f}"
