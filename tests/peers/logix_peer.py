"""pylogix 1.1.6 as the independent Logix client for the tests (talking to
cpppo's simulator, docs/PEERS.md).

  logix_peer.py client PORT    JSON lines on stdin, one JSON answer per line
Ops: {"op":"read","tag":"Temp[2]","count":1}, {"op":"write","tag":"Counter","value":5},
{"op":"bench_rw","tag":"Speed","n":N} (write a REAL and read it back, N times: seconds each)
"""
import json
import sys

from pylogix import PLC


def client(port):
    plc = PLC("127.0.0.1", port=port)
    plc.SocketTimeout = 5.0
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "bench":
                # pylogix's own multi-tag read (it packs them), scan after scan.
                import time

                first = [r.Value for r in plc.Read(req["tags"])]
                secs = []
                for _ in range(req["n"]):
                    t0 = time.perf_counter()
                    plc.Read(req["tags"])
                    secs.append(time.perf_counter() - t0)
                out = {"seconds": secs, "first": first}
            elif req["op"] == "bench_rw":
                # pylogix's own client: write the tag, read it back, n times.
                import time

                secs = []
                for i in range(req["n"]):
                    t0 = time.perf_counter()
                    w = plc.Write(req["tag"], float(i))
                    r = plc.Read(req["tag"])
                    secs.append(time.perf_counter() - t0)
                    assert w.Status == "Success" and r.Value == float(i), (w.Status, r.Value)
                out = {"seconds": secs}
            elif req["op"] == "read":
                r = plc.Read(req["tag"], req.get("count", 1))
                out = {"value": r.Value, "status": r.Status} if r.Status == "Success" else {"error": r.Status}
            elif req["op"] == "write":
                r = plc.Write(req["tag"], req["value"])
                out = {"ok": True} if r.Status == "Success" else {"error": r.Status}
            else:
                out = {"error": "unknown op"}
        except Exception as e:  # the test shows it
            out = {"error": repr(e)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    {"client": client}[sys.argv[1]](int(sys.argv[2]))
