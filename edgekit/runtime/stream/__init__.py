"""The stream runner (`edgekit run-stream`): source -> preprocess -> infer -> postprocess -> sink, one
thread per stage with bounded queues (DESIGN.md section 5). Runtime side: never imports torch."""


# How long a batch waits for more frames of a live source once its first frame is there (--batch-wait default).
DEFAULT_BATCH_WAIT_MS = 5.0


def backoff_s(attempt: int) -> float:
    """Seconds before reconnect attempt 1, 2, 3, ... to a lost live source or server: 0.5, 1, 2, 4, 8, 8, ..."""
    return min(8.0, 0.5 * 2 ** (attempt - 1))
