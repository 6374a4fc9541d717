"""Byte units and the human-readable times and sizes of the bench's reports and messages."""

GIB = float(1024**3)
MIB = float(1024**2)


def format_time(seconds):
    """Seconds as ``"12.3 µs"``, ``"4.56 ms"`` or ``"1.2 s"`` (3 significant digits).

    Args:
      seconds: a duration in seconds, or None (formatted as ``"–"``).
    """
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def format_bytes(n):
    """Bytes as ``"1.23 GiB"``, ``"4.5 MiB"`` or ``"678 KiB"``.

    Args:
      n: a number of bytes (may be negative), or None (formatted as ``"–"``).
    """
    if n is None:
        return "–"
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    if abs(n) >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.0f} KiB"
