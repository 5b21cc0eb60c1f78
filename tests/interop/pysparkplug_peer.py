"""The independent Sparkplug B implementation our interop test talks to.

Reads one JSON request on stdin, answers one JSON document on stdout. All
encoding and decoding is done by pysparkplug (PyPI), not by us; this file only
translates between pysparkplug objects and a canonical JSON form that both
sides can compare exactly:

  ints, bools, strings as themselves; Float/Double as the hex of their IEEE
  little-endian bytes (so -0.0 and every bit survive); DateTime as integer ms;
  Bytes/File as hex; arrays as lists of the same forms.

Requests:
  {"op": "decode_birth", "payload": hex}
  {"op": "decode_data", "birth": hex, "payload": hex}
  {"op": "encode_birth", "timestamp": int, "seq": int, "metrics": [metric...]}
  {"op": "encode_data", "timestamp": int, "seq": int, "metrics": [metric...]}  # alias only, no datatypes
  {"op": "bench", "payload_kind": "ddata"|"nbirth", "metrics": int, "seconds": float}
"""

import datetime
import json
import struct
import sys
import time

import pysparkplug as sp
from pysparkplug import DataType as DT

UTC = datetime.timezone.utc


def ms_to_dt(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, tz=UTC)


def dt_to_ms(dt):
    # timestamp() is a float; round to the nearest ms to undo its error.
    return int(round(dt.timestamp() * 1000))


def to_canonical(dtype, value):
    if value is None:
        return None
    if dtype == DT.FLOAT:
        return struct.pack("<f", value).hex()
    if dtype == DT.DOUBLE:
        return struct.pack("<d", value).hex()
    if dtype == DT.DATETIME:
        return dt_to_ms(value)
    if dtype in (DT.BYTES, DT.FILE):
        return bytes(value).hex()
    if dtype == DT.UINT8_ARRAY:
        return list(value)
    if dtype == DT.FLOAT_ARRAY:
        return [struct.pack("<f", v).hex() for v in value]
    if dtype == DT.DOUBLE_ARRAY:
        return [struct.pack("<d", v).hex() for v in value]
    if dtype == DT.DATETIME_ARRAY:
        return [dt_to_ms(v) for v in value]
    if isinstance(value, tuple):
        return list(value)
    return value


def from_canonical(dtype, value):
    if value is None:
        return None
    if dtype == DT.FLOAT:
        return struct.unpack("<f", bytes.fromhex(value))[0]
    if dtype == DT.DOUBLE:
        return struct.unpack("<d", bytes.fromhex(value))[0]
    if dtype == DT.DATETIME:
        return ms_to_dt(value)
    if dtype in (DT.BYTES, DT.FILE):
        return bytes.fromhex(value)
    if dtype == DT.FLOAT_ARRAY:
        return tuple(struct.unpack("<f", bytes.fromhex(v))[0] for v in value)
    if dtype == DT.DOUBLE_ARRAY:
        return tuple(struct.unpack("<d", bytes.fromhex(v))[0] for v in value)
    if dtype == DT.DATETIME_ARRAY:
        return tuple(ms_to_dt(v) for v in value)
    if isinstance(value, list):
        return tuple(value)
    return value


def metric_json(m):
    return {
        "name": m.name,
        "alias": m.alias,
        "timestamp": m.timestamp,
        "datatype": int(m.datatype),
        "is_historical": m.is_historical,
        "is_transient": m.is_transient,
        "is_null": m.is_null,
        "value": to_canonical(m.datatype, m.value),
    }


def metric_from_json(j, with_name=True):
    dtype = DT(j["datatype"])
    return sp.Metric(
        timestamp=j["timestamp"],
        name=j["name"] if with_name else None,
        datatype=dtype,
        value=from_canonical(dtype, j["value"]),
        alias=j.get("alias"),
        is_historical=j.get("is_historical", False),
        is_null=j["value"] is None,
    )


def payload_json(p):
    return {
        "timestamp": p.timestamp,
        "seq": getattr(p, "seq", None),
        "metrics": [metric_json(m) for m in p.metrics],
    }


def bench(kind, n, seconds):
    """Times pysparkplug encoding and decoding of the same payloads our bench uses."""
    now = 1_700_000_000_000
    if kind == "ddata":
        metrics = tuple(
            sp.Metric(timestamp=now + i, name=None, alias=i + 1, datatype=DT.DOUBLE, value=i * 0.5)
            for i in range(n)
        )
        payload = sp.DData(timestamp=now, seq=7, metrics=metrics)
        birth = sp.DBirth(
            timestamp=now,
            seq=1,
            metrics=tuple(
                sp.Metric(timestamp=now, name=f"Line/Tag {i}", alias=i + 1, datatype=DT.DOUBLE, value=0.0)
                for i in range(n)
            ),
        )
        decode = lambda raw: sp.DData.decode(raw, birth=birth)  # noqa: E731
        encode = lambda: payload.encode()  # noqa: E731
    else:
        types = [DT.DOUBLE, DT.INT32, DT.BOOLEAN, DT.STRING, DT.FLOAT]
        values = [1.25, -7, True, "running", 0.5]
        metrics = tuple(
            sp.Metric(timestamp=now, name=f"Area {i // 100}/Tag {i}", alias=i + 1,
                      datatype=types[i % 5], value=values[i % 5])
            for i in range(n)
        )
        payload = sp.NBirth(timestamp=now, seq=0, metrics=metrics)
        decode = lambda raw: sp.NBirth.decode(raw)  # noqa: E731
        encode = lambda: payload.encode(include_dtypes=True)  # noqa: E731
    raw = encode()
    result = {"bytes": len(raw)}
    for name, fn in (("encode", encode), ("decode", lambda: decode(raw))):
        samples = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            iters = 0
            while time.perf_counter() - t0 < 0.05:
                fn()
                iters += 1
            samples.append((time.perf_counter() - t0) / iters)
        samples.sort()
        result[name + "_median_s"] = samples[len(samples) // 2]
    return result


def main():
    req = json.load(sys.stdin)
    op = req["op"]
    if op == "decode_birth":
        out = payload_json(sp.NBirth.decode(bytes.fromhex(req["payload"])))
    elif op == "decode_data":
        birth = sp.NBirth.decode(bytes.fromhex(req["birth"]))
        out = payload_json(sp.NData.decode(bytes.fromhex(req["payload"]), birth=birth))
    elif op == "encode_birth":
        metrics = tuple(metric_from_json(m) for m in req["metrics"])
        out = {"payload": sp.NBirth(timestamp=req["timestamp"], seq=req["seq"], metrics=metrics).encode().hex()}
    elif op == "encode_data":
        metrics = tuple(metric_from_json(m, with_name=False) for m in req["metrics"])
        out = {"payload": sp.NData(timestamp=req["timestamp"], seq=req["seq"], metrics=metrics).encode().hex()}
    elif op == "bench":
        out = bench(req["payload_kind"], req["metrics"], req["seconds"])
    else:
        raise SystemExit(f"unknown op {op}")
    out["pysparkplug_version"] = sp.__version__
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
