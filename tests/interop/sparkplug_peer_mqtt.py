"""An independent Sparkplug peer on a real broker, for the end-to-end tests.

Subscribes to spBv1.0/# and prints one JSON line per message, decoded by
pysparkplug (births are remembered so aliased DATA without datatypes decodes).
Reads JSON commands on stdin to publish, encoded by pysparkplug:
  {"op": "rebirth", "group": G, "node": N}
  {"op": "state", "host": H, "online": bool, "timestamp": ms}
  {"op": "clear_state", "host": H}
  {"op": "command", "group": G, "node": N, ["device": D,] "metrics": [{"name": M, "type": "Boolean", "value": V,
      ["properties": {"key": "text"}]}, ...]}
      (an NCMD, or a DCMD with "device"; "type" is a pysparkplug DataType name; string
      properties, e.g. writeRequest, are added with the Sparkplug protobuf schema)
DATA metrics with a PropertySet get "properties": {key: value} (pysparkplug does not
decode properties; they are read with the Sparkplug schema's protobuf classes it ships).
Usage: sparkplug_peer_mqtt.py PORT [HOST_ID]
With SPB_PEER_TLS_DIR=DIR it connects with mTLS: DIR/ca.pem, DIR/client.pem,
DIR/client.key (a directory certs-example/make-certs.sh writes).

With HOST_ID the peer is that Sparkplug Primary Host: its Will is
STATE offline, and on every (re)connect it subscribes first and then publishes
STATE online with the timestamp of that Will, so edge nodes are born only once
it listens. It reconnects within a second after a broker restart.
"""

import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pysparkplug as sp
from pysparkplug import DataType as DT
from pysparkplug import _protobuf as pb

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from pysparkplug_peer import metric_json  # noqa: E402  (same canonical form)

births = {}
out_lock = threading.Lock()


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def on_message(_client, _userdata, msg):
    parts = msg.topic.split("/")
    rec = {"topic": msg.topic, "retain": bool(msg.retain), "qos": msg.qos}
    try:
        if parts[1] == "STATE":
            rec["kind"] = "STATE"
            rec["state"] = json.loads(msg.payload) if msg.payload else None
            emit(rec)
            return
        kind = parts[2]
        rec["kind"] = kind
        key = (parts[1], parts[3]) + ((parts[4],) if len(parts) > 4 else ())
        if kind == "NBIRTH":
            p = sp.NBirth.decode(msg.payload)
            births[key] = p
        elif kind == "DBIRTH":
            p = sp.DBirth.decode(msg.payload)
            births[key] = p
        elif kind in ("NDATA", "DDATA"):
            birth = births.get(key)
            if birth is None:
                rec["error"] = "DATA before its birth"
                emit(rec)
                return
            p = (sp.NData if kind == "NDATA" else sp.DData).decode(msg.payload, birth=birth)
        elif kind == "NDEATH":
            p = sp.NDeath.decode(msg.payload)
        elif kind == "DDEATH":
            p = sp.DDeath.decode(msg.payload)
        else:
            emit(rec)
            return
        if kind in ("NDATA", "DDATA"):
            props = properties_of(msg.payload)
        else:
            props = {}
        rec["timestamp"] = p.timestamp
        rec["seq"] = getattr(p, "seq", None)
        if kind == "NDEATH":
            rec["metrics"] = [metric_json(p.bd_seq_metric)]
        else:
            rec["metrics"] = [metric_json(m) for m in getattr(p, "metrics", ())]
            for i, m in enumerate(rec["metrics"]):
                if i in props:
                    m["properties"] = props[i]
    except Exception as exc:  # a decode failure is a finding, report it
        rec["error"] = f"{type(exc).__name__}: {exc}"
    emit(rec)


def property_value(v):
    which = v.WhichOneof("value")
    return None if which is None else getattr(v, which)


def properties_of(raw):
    """{metric index: {key: value}} for the metrics that carry a PropertySet."""
    out = {}
    for i, m in enumerate(pb.Payload.FromString(raw).metrics):
        if m.HasField("properties"):
            ps = m.properties
            out[i] = {k: property_value(v) for k, v in zip(ps.keys, ps.values)}
    return out


def with_properties(payload, metrics):
    """`payload` (encoded) with each metric's string "properties" added."""
    if not any(m.get("properties") for m in metrics):
        return payload
    p = pb.Payload.FromString(payload)
    for pm, m in zip(p.metrics, metrics):
        for k, v in (m.get("properties") or {}).items():
            pm.properties.keys.append(k)
            pv = pm.properties.values.add()
            pv.type = int(DT.STRING)
            pv.string_value = v
    return p.SerializeToString()


def commands(client):
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "rebirth":
            payload = sp.NCmd(
                timestamp=sp.get_current_timestamp(),
                metrics=(sp.Metric(timestamp=sp.get_current_timestamp(), name="Node Control/Rebirth",
                                   datatype=DT.BOOLEAN, value=True),),
            ).encode(include_dtypes=True)
            client.publish(f"spBv1.0/{cmd['group']}/NCMD/{cmd['node']}", payload, qos=0).wait_for_publish()
        elif op == "state":
            body = json.dumps({"online": cmd["online"], "timestamp": cmd["timestamp"]})
            client.publish(f"spBv1.0/STATE/{cmd['host']}", body, qos=1, retain=True).wait_for_publish()
        elif op == "command":
            ts = sp.get_current_timestamp()
            metrics = tuple(sp.Metric(timestamp=ts, name=m["name"], datatype=DT[m["type"].upper()], value=m["value"])
                            for m in cmd["metrics"])
            device = cmd.get("device")
            cls = sp.DCmd if device else sp.NCmd
            payload = cls(timestamp=ts, metrics=metrics).encode(include_dtypes=True)
            payload = with_properties(payload, cmd["metrics"])
            topic = (f"spBv1.0/{cmd['group']}/DCMD/{cmd['node']}/{device}" if device
                     else f"spBv1.0/{cmd['group']}/NCMD/{cmd['node']}")
            client.publish(topic, payload, qos=0).wait_for_publish()
        elif op == "clear_state":
            client.publish(f"spBv1.0/STATE/{cmd['host']}", b"", qos=1, retain=True).wait_for_publish()
        emit({"ack": op})


def main():
    port = int(sys.argv[1])
    host = sys.argv[2] if len(sys.argv) > 2 else None
    client = mqtt.Client(client_id=f"pysparkplug-peer-{time.time_ns()}", clean_session=True)
    client.on_message = on_message
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    ready = threading.Event()
    connect_ts = [0]

    def arm_will():
        # Sparkplug 3.0: the Will and the following STATE online share the timestamp.
        connect_ts[0] = int(time.time() * 1000)
        if host:
            body = json.dumps({"online": False, "timestamp": connect_ts[0]})
            client.will_set(f"spBv1.0/STATE/{host}", body, qos=1, retain=True)

    def on_subscribe(c, u, mid, q):
        if host:
            body = json.dumps({"online": True, "timestamp": connect_ts[0]})
            c.publish(f"spBv1.0/STATE/{host}", body, qos=1, retain=True)
        emit({"subscribed": True})

    client.on_connect = lambda c, u, f, rc: (c.subscribe("spBv1.0/#", qos=1), ready.set())
    client.on_subscribe = on_subscribe
    client.on_disconnect = lambda c, u, rc: arm_will()
    tls = os.environ.get("SPB_PEER_TLS_DIR")
    if tls:
        client.tls_set(ca_certs=f"{tls}/ca.pem", certfile=f"{tls}/client.pem", keyfile=f"{tls}/client.key")
    arm_will()
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.wait(10)
    commands(client)
    client.loop_stop()


if __name__ == "__main__":
    main()
