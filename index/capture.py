"""What a photo's file says about its capture: when, with which camera, where.

`capture_facts(raw, mtime_ns)` reads, with Pillow, from the file's bytes:

- ``taken_at``: EXIF DateTimeOriginal (with SubSecTimeOriginal and OffsetTimeOriginal when
  present) as an instant in UTC. Without an offset the camera's wall-clock time is taken as
  UTC (EXIF does not say the zone). Without a usable date: the file's mtime, in UTC.
- ``taken_at_source``: ``"exif"`` or ``"mtime"``, which of the two it is.
- ``camera_make``, ``camera_model``: EXIF Make and Model, NULs and whitespace stripped.
- ``lat``, ``lon``: the GPS IFD's latitude and longitude in signed decimal degrees, when
  both are present (with their N/S, E/W references) and in range.

Bad EXIF never fails: a field that cannot be read is just absent.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import re
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

EXIF_IFD = 0x8769
GPS_IFD = 0x8825
MAKE, MODEL = 271, 272
DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL, SUBSEC_TIME_ORIGINAL = 36867, 36881, 37521
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4
FIELDS = ("taken_at", "taken_at_source", "camera_make", "camera_model", "lat", "lon")

_EXIF_TIME = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})$")
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


def capture_facts(raw: bytes, mtime_ns: int | None) -> dict[str, Any]:
    """The capture fields of an image file (see the module doc); `taken_at` as ISO 8601
    text in UTC. Absent keys: not known."""
    out: dict[str, Any] = {}
    try:
        with Image.open(io.BytesIO(raw)) as image:
            exif = image.getexif()
            base = dict(exif)
            sub = dict(exif.get_ifd(EXIF_IFD))
            gps = dict(exif.get_ifd(GPS_IFD))
    except Exception as e:  # Pillow raises many kinds on bad EXIF; the field is then absent
        log.debug("no EXIF read: %s", e)
        base, sub, gps = {}, {}, {}
    when = _exif_time(sub.get(DATETIME_ORIGINAL, base.get(DATETIME_ORIGINAL)),
                      sub.get(SUBSEC_TIME_ORIGINAL),
                      sub.get(OFFSET_TIME_ORIGINAL, base.get(OFFSET_TIME_ORIGINAL)))  # fmt: skip
    if when is not None:
        out["taken_at"], out["taken_at_source"] = when.isoformat(), "exif"
    elif mtime_ns is not None:
        seconds, ns = divmod(int(mtime_ns), 1_000_000_000)
        try:
            mtime = dt.datetime.fromtimestamp(seconds, dt.UTC) + dt.timedelta(
                microseconds=ns // 1000
            )
        except (OverflowError, OSError, ValueError):
            mtime = None
        if mtime is not None:
            out["taken_at"], out["taken_at_source"] = mtime.isoformat(), "mtime"
    for key, tag in (("camera_make", MAKE), ("camera_model", MODEL)):
        text = _text(base.get(tag))
        if text:
            out[key] = text
    place = _gps(gps)
    if place is not None:
        out["lat"], out["lon"] = place
    return out


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", " ").strip()
    return text or None


def _exif_time(value: Any, subsec: Any, offset: Any) -> dt.datetime | None:
    """An EXIF date-time ("YYYY:MM:DD HH:MM:SS") as an aware UTC datetime, or None."""
    text = _text(value)
    match = _EXIF_TIME.match(text) if text else None
    if match is None:
        return None
    try:
        year, month, day, hour, minute, second = (int(g) for g in match.groups())
        when = dt.datetime(year, month, day, hour, minute, second)
    except ValueError:  # 0000:00:00 00:00:00, a 31st of February, ...
        return None
    digits = _text(subsec)
    if digits and digits.isdigit():
        when = when.replace(microsecond=int(digits[:6].ljust(6, "0")))
    zone = dt.UTC
    shift = _OFFSET.match(_text(offset) or "")
    if shift is not None:
        sign, hours, minutes = shift.groups()
        delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
        if delta <= dt.timedelta(hours=18):
            zone = dt.timezone(-delta if sign == "-" else delta)
    try:
        return when.replace(tzinfo=zone).astimezone(dt.UTC)
    except (OverflowError, ValueError):
        return None


def _degrees(value: Any, ref: Any, positive: str, negative: str, limit: float) -> float | None:
    side = _text(ref)
    if side is None or side.upper() not in (positive, negative):
        return None
    try:
        parts = [float(v) for v in value]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not 1 <= len(parts) <= 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        return None
    degrees = sum(p / 60**i for i, p in enumerate(parts))
    if degrees > limit:
        return None
    return -degrees if side.upper() == negative else degrees


def _gps(gps: dict[int, Any]) -> tuple[float, float] | None:
    lat = _degrees(gps.get(GPS_LAT), gps.get(GPS_LAT_REF), "N", "S", 90.0)
    lon = _degrees(gps.get(GPS_LON), gps.get(GPS_LON_REF), "E", "W", 180.0)
    if lat is None or lon is None:
        return None
    return round(lat, 7), round(lon, 7)
