"""Training logs: CSV and TensorBoard per epoch, a loss-curve PNG, and a fitting diagnosis."""

import csv
import io
from pathlib import Path
from typing import Dict, List, Optional

from edgekit.runtime.artifacts import atomic_path, write_text


class EpochLog:
    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.csv_path = run_dir / "metrics.csv"
        self.rows: List[Dict[str, float]] = []
        if resume and self.csv_path.is_file():
            with open(self.csv_path) as f:
                self.rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional: the CSV and PNG carry the same numbers
            pass

    def add(self, row: Dict[str, float]) -> None:
        self.rows.append(row)
        keys = list(row)
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=keys)
        w.writeheader()
        for r in self.rows:
            w.writerow({k: r.get(k, "") for k in keys})
        write_text(self.csv_path, text.getvalue())  # atomic: never through a planted link, never half-written
        if self.tb is not None:
            step = int(row["epoch"])
            for k, v in row.items():
                if k != "epoch":
                    self.tb.add_scalar(k.replace("_", "/", 1), v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curves(rows: List[Dict[str, float]], metric: str, path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in rows], label="train loss")
    ax1.plot(epochs, [r["val_loss"] for r in rows], label="val loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(epochs, [r[f"val_{metric}"] for r in rows], color="tab:green", label=f"val {metric}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(metric)
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def diagnose(rows: List[Dict[str, float]], metric: str) -> List[str]:
    """Warnings read off the curves: over-fitting (val loss rising while train loss falls) or
    under-fitting (still improving at the last epoch, or a low metric with a flat train loss)."""
    warnings: List[str] = []
    if len(rows) < 4:
        return warnings
    train = [r["train_loss"] for r in rows]
    val = [r["val_loss"] for r in rows]
    best_val = min(range(len(val)), key=val.__getitem__)
    since = len(val) - 1 - best_val
    if since >= 3 and val[-1] > val[best_val] * 1.1 and train[-1] < train[best_val]:
        warnings.append(
            f"over-fitting: val loss rose {val[-1] / val[best_val]:.2f}x since epoch {int(rows[best_val]['epoch'])} "
            "while train loss kept falling; more data, stronger augmentation or fewer epochs would help"
        )
    scores = [r[f"val_{metric}"] for r in rows]
    tail = max(2, len(rows) // 5)
    recent_gain = scores[-1] - max(scores[:-tail]) if len(scores) > tail else 0.0
    train_drop = (train[-tail - 1] - train[-1]) / max(1e-9, train[-tail - 1])
    if recent_gain > 0.01 and train_drop > 0.05:
        warnings.append(
            f"under-fitting: val {metric} still rose {recent_gain:.3f} over the last {tail} epochs and train loss "
            f"fell {train_drop:.0%}; train longer"
        )
    elif scores[-1] < 0.5 and train_drop < 0.01:
        warnings.append(
            f"under-fitting: val {metric} is {scores[-1]:.3f} and train loss has stopped falling; "
            "try a larger model, a higher learning rate or more epochs"
        )
    return warnings
