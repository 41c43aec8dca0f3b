"""A small pure-Python reference for tidegate's event_id, written from the README's definition.

Property tests compare it with the native implementation, so the definition stays reproducible by downstream
consumers in any language.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import blake3

DOMAIN = "tidegate:event-id:v2\n"

IDENTITY_FIELDS: dict[str, tuple[str, ...]] = {
    "telemetry/v1": ("device_id", "timestamp", "metrics"),
    "event/v1": ("source", "event_type", "entity_id", "event_time", "payload"),
}
TIME_FIELDS = {"telemetry/v1": "timestamp", "event/v1": "event_time"}

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


INTEGER_RANGE = range(-(2**63), 2**64)


def canonical_number(value: int | float) -> str:
    """An integer of the 64-bit range as its digits (an int kept exactly, or a float whose value is one); any other
    number as the nearest double, in ECMAScript's Number.prototype.toString, as RFC 8785 prescribes.

    JSON numbers written as integers (digits only) are ints, any other spelling (`10.0`, `1e1`) floats: parse
    with `json.loads`, whose ints are exact and floats the nearest double.
    """
    if isinstance(value, int) and value in INTEGER_RANGE:
        return str(value)
    value = float(value)
    if value.is_integer() and int(value) in INTEGER_RANGE:
        return str(int(value))
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    digits_tuple = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digits_tuple.digits))
    assert isinstance(digits_tuple.exponent, int)
    k = len(digits)
    n = k + digits_tuple.exponent
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        exponent = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"
    return sign + text


def canonical_json(value: Any) -> str:
    """RFC 8785 (JCS): sorted keys (UTF-16 code units), no whitespace, ECMAScript numbers."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return canonical_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(canonical_json(item) for item in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canonical_json(value[k]) for k in keys) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def canonical_timestamp(text: str) -> str:
    """UTC, `Z`, the fraction as written without trailing zeros (none when zero); a leap second (23:59:60 UTC)
    stays :60."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"not RFC 3339: {text}")
    year, month, day, hour, minute, second, fraction, _z, sign, off_h, off_m = match.groups()
    leap = second == "60"
    moment = datetime(int(year), int(month), int(day), int(hour), int(minute), 59 if leap else int(second), tzinfo=UTC)
    if sign:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        moment = moment - offset if sign == "+" else moment + offset
    if leap and (moment.hour, moment.minute) != (23, 59):
        raise ValueError(f"a leap second ends a UTC day: {text}")
    trimmed = (fraction or "").rstrip("0")
    clock = moment.strftime("%Y-%m-%dT%H:%M:") + ("60" if leap else moment.strftime("%S"))
    return clock + (f".{trimmed}" if trimmed else "") + "Z"


def event_id(contract_name: str, record: dict[str, Any]) -> str:
    """First 128 bits of BLAKE3(domain || contract name || "\\n" || JCS(identity)), lower-case hex."""
    record = dict(record)
    time_field = TIME_FIELDS[contract_name]
    record[time_field] = canonical_timestamp(record[time_field])
    fields = IDENTITY_FIELDS[contract_name]
    identity = {k: record[k] for k in fields if k in record}
    data = (DOMAIN + contract_name + "\n" + canonical_json(identity)).encode()
    return blake3.blake3(data).digest()[:16].hex()
