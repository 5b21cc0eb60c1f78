"""Independent S7 peers for the tests: python-snap7's server, and python-snap7's
client doing typed reads and writes with python-snap7's own snap7.util codecs
(so nothing on this side shares code with our S7 driver).

  s7_peer.py server PORT [HOLD_DB...]
                             python-snap7 server on 127.0.0.1:PORT (PDU 480); a write
                             to a HOLD_DB is acknowledged, then its old bytes are put
                             back before the answer leaves, as a PLC program that
                             holds its own value would (read-back differs)
  s7_peer.py client PORT     JSON lines on stdin, one JSON answer per line

Server areas: DB1 (512 B), DB2 (2048 B), DB3 (64 B), M (256 B), I (64 B),
Q (64 B), 32 timers, 32 counters. DB9 does not exist (for error tests).
Client ops: {"op":"set"|"get","area":"DB","db":1,"offset":0,"type":"REAL",
"value":..., "bit":0, "max":20}, {"op":"pdu"}, {"op":"raw","area":..,"size":N},
{"op":"bench_rw","db":1,"offset":0,"n":N} (write a REAL and read it back, N times: seconds each).
"""
import datetime
import json
import logging
import sys
import time

import snap7
import snap7.util as u
from snap7.type import Area, SrvArea

AREAS = {"DB": Area.DB, "M": Area.MK, "I": Area.PE, "Q": Area.PA, "T": Area.TM, "C": Area.CT}
SIZES = {
    "BOOL": 1, "BYTE": 1, "SINT": 1, "USINT": 1, "CHAR": 1,
    "WORD": 2, "INT": 2, "UINT": 2, "DATE": 2,
    "DWORD": 4, "DINT": 4, "UDINT": 4, "REAL": 4, "TIME": 4,
    "LREAL": 8, "LINT": 8, "ULINT": 8, "LWORD": 8, "DT": 8,
}


def server(port, hold=()):
    # Its warnings ("area not registered") are expected in error tests.
    logging.getLogger("snap7").setLevel(logging.CRITICAL)
    srv = snap7.Server(log=False)
    keep = []  # the server uses these buffers in place

    def reg(area, index, size):
        buf = bytearray(size)
        keep.append(buf)
        srv.register_area(area, index, buf)

    reg(SrvArea.DB, 1, 512)
    reg(SrvArea.DB, 2, 2048)
    reg(SrvArea.DB, 3, 64)
    reg(SrvArea.MK, 0, 256)
    reg(SrvArea.PE, 0, 64)
    reg(SrvArea.PA, 0, 64)
    reg(SrvArea.TM, 0, 64)
    reg(SrvArea.CT, 0, 64)
    if hold:
        write = srv._write_to_memory_area

        def held(area, db_number, start, data):
            key = (area, db_number)
            if db_number not in hold or key not in srv.memory_areas:
                return write(area, db_number, start, data)
            before = bytes(srv.memory_areas[key])
            ok = write(area, db_number, start, data)
            srv.memory_areas[key][:] = before  # the PLC program writes its value back
            return ok

        srv._write_to_memory_area = held
    srv.start_to("127.0.0.1", port)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        time.sleep(3600)


def size_of(req):
    t = req["type"]
    if t == "STRING":
        return req.get("max", 254) + 2
    return SIZES[t]


def set_typed(buf, t, v, req):
    if t == "BOOL":
        u.set_bool(buf, 0, req.get("bit", 0), bool(v))
    elif t == "STRING":
        u.set_string(buf, 0, v, req.get("max", 254))
    elif t == "DT":
        u.set_dt(buf, 0, datetime.datetime.fromisoformat(v))
    elif t == "DATE":
        u.set_date(buf, 0, datetime.date.fromisoformat(v))
    elif t == "TIME":
        # python-snap7 takes TIME as text; store plain milliseconds like the CPU does.
        buf[0:4] = int(v).to_bytes(4, "big", signed=True)
    elif t == "CHAR":
        u.set_char(buf, 0, v)
    else:
        getattr(u, "set_" + t.lower())(buf, 0, v)


def get_typed(buf, t, req):
    if t == "BOOL":
        return u.get_bool(buf, 0, req.get("bit", 0))
    if t == "STRING":
        return u.get_string(buf, 0)
    if t == "DT":
        return u.get_date_time_object(buf, 0).isoformat()
    if t == "DATE":
        return u.get_date(buf, 0).isoformat()
    if t == "TIME":
        return int.from_bytes(buf[0:4], "big", signed=True)
    if t == "CHAR":
        return u.get_char(buf, 0)
    return getattr(u, "get_" + t.lower())(buf, 0)


def client(port):
    c = snap7.Client()
    for _ in range(50):
        try:
            c.connect("127.0.0.1", 0, 1, port)
            break
        except Exception:
            time.sleep(0.1)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            op = req["op"]
            if op == "pdu":
                out = {"pdu": c.get_pdu_length()}
            elif op == "bench_rw":
                # python-snap7's own client: write a REAL, read it back, n times.
                db, off = req.get("db", 1), req.get("offset", 0)
                secs = []
                for i in range(req["n"]):
                    buf = bytearray(4)
                    u.set_real(buf, 0, float(i))
                    t0 = time.perf_counter()
                    c.write_area(Area.DB, db, off, buf)
                    back = c.read_area(Area.DB, db, off, 4)
                    secs.append(time.perf_counter() - t0)
                    assert u.get_real(back, 0) == float(i)
                out = {"seconds": secs}
            elif op == "bench":
                # python-snap7's own optimizing multi-tag read, scan after scan;
                # it takes at most 20 tags a call (MAX_VARS), so a scan is chunks of 20.
                tags = req["tags"]

                def scan():
                    out = []
                    for i in range(0, len(tags), 20):
                        out.extend(c.read_tags(tags[i : i + 20]))
                    return out

                first = scan()
                secs = []
                for _ in range(req["n"]):
                    t0 = time.perf_counter()
                    scan()
                    secs.append(time.perf_counter() - t0)
                out = {"seconds": secs, "first": first}
            else:
                area = AREAS[req.get("area", "DB")]
                db = req.get("db", 0)
                off = req.get("offset", 0)
                if op == "raw":
                    out = {"hex": c.read_area(area, db, off, req["size"]).hex()}
                elif op == "rawset":
                    c.write_area(area, db, off, bytearray(bytes.fromhex(req["hex"])))
                    out = {"ok": True}
                else:
                    t = req["type"]
                    buf = c.read_area(area, db, off, size_of(req))
                    if op == "set":
                        set_typed(buf, t, req["value"], req)
                        c.write_area(area, db, off, buf)
                        out = {"ok": True}
                    else:
                        out = {"value": get_typed(buf, t, req)}
        except Exception as e:  # the test shows it
            out = {"error": repr(e)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]), {int(db) for db in sys.argv[3:]})
    else:
        client(int(sys.argv[2]))
