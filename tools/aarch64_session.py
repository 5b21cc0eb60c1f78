#!/usr/bin/env python3
"""The board's binary in a real session: the aarch64 build of spb-gateway,
run under qemu-aarch64-static, connects with mTLS to a private mosquitto
configured by certs-example/make-certs.sh (its ACL included), publishes
NBIRTH, DBIRTH and DDATA that an independent Sparkplug implementation
(pysparkplug, subscribed with the uplink's certificate) decodes, and on
SIGTERM publishes NDEATH and exits 0.

usage: aarch64_session.py BINARY          (run by `make aarch64-check`, in the venv)"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 90  # qemu user-mode emulation: starting and the TLS handshake are slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, within: float) -> None:
    end = time.time() + within
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    binary = pathlib.Path(sys.argv[1]).resolve()
    work = pathlib.Path(tempfile.mkdtemp(prefix="spb-aarch64-"))
    procs = []
    try:
        pki = work / "pki"
        subprocess.run([ROOT / "certs-example/make-certs.sh", pki, "--group", "Board", "qemu-gw"],
                       check=True, stdout=subprocess.DEVNULL)
        port = free_port()
        conf = (pki / "broker/mosquitto.conf").read_text().replace(
            "\nlistener 8883\n", f"\nlistener {port} 127.0.0.1\n")
        user = "user root\n" if os.geteuid() == 0 else ""
        (work / "mosquitto.conf").write_text(f"{user}persistence false\nlog_dest file {work}/mosquitto.log\n{conf}")
        procs.append(subprocess.Popen(["mosquitto", "-c", work / "mosquitto.conf"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port, 10)

        # Its stdin stays open: the peer runs until it reads EOF.
        peer = subprocess.Popen([sys.executable, ROOT / "tests/interop/sparkplug_peer_mqtt.py", str(port)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "SPB_PEER_TLS_DIR": str(pki / "uplink")})
        procs.append(peer)
        seen = []
        arrived = threading.Condition()

        def read():
            for line in peer.stdout:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                with arrived:
                    seen.append(rec)
                    arrived.notify_all()
        threading.Thread(target=read, daemon=True).start()

        def wait_for(what, pred):
            end = time.time() + TIMEOUT
            with arrived:
                while not any(pred(r) for r in seen):
                    if time.time() > end:
                        log = "".join((work / f).read_text(errors="replace")[-3000:]
                                      for f in ("gateway.log", "mosquitto.log") if (work / f).exists())
                        raise SystemExit(f"aarch64 session: no {what} within {TIMEOUT} s; seen {seen[-5:]}\n{log}")
                    arrived.wait(1)
            return [r for r in seen if pred(r)]

        wait_for("peer subscription", lambda r: r.get("subscribed"))
        node = pki / "qemu-gw"
        (work / "config.toml").write_text(f"""
[node]
group_id = "Board"
node_id = "qemu-gw"
[mqtt]
connect_timeout = "30s"
[[mqtt.servers]]
host = "127.0.0.1"
port = {port}
[mqtt.servers.tls]
ca = "{node}/ca.pem"
cert = "{node}/client.pem"
key = "{node}/client.key"
[store]
path = "{work}/state"
[telemetry]
listen = ""
log_format = "human"
[[devices]]
name = "press"
driver = "sim"
[devices.scan_classes]
fast = "200ms"
[[devices.tags]]
name = "Count"
address = "counter"
datatype = "UInt64"
scan_class = "fast"
""")
        with open(work / "gateway.log", "w") as log:
            gw = subprocess.Popen(["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu", binary,
                                   "--config", work / "config.toml"], stdout=log, stderr=log)
        procs.append(gw)
        nbirth = wait_for("NBIRTH", lambda r: r.get("topic") == "spBv1.0/Board/NBIRTH/qemu-gw")[0]
        dbirth = wait_for("DBIRTH", lambda r: r.get("topic") == "spBv1.0/Board/DBIRTH/qemu-gw/press")[0]
        ddata = wait_for("3 DDATA", lambda r: r.get("topic") == "spBv1.0/Board/DDATA/qemu-gw/press"
                         and len([x for x in seen if x.get("kind") == "DDATA"]) >= 3)
        bad = [r for r in seen if "error" in r]
        if bad:
            raise SystemExit(f"aarch64 session: pysparkplug could not decode {bad}")
        names = {m.get("name") for m in dbirth["metrics"]}
        if "Count" not in names or "bdSeq" not in {m.get("name") for m in nbirth["metrics"]}:
            raise SystemExit(f"aarch64 session: births lack their metrics: {nbirth} {dbirth}")
        gw.send_signal(signal.SIGTERM)
        rc = gw.wait(30)
        if rc != 0:
            raise SystemExit(f"aarch64 session: SIGTERM exit {rc}\n{(work / 'gateway.log').read_text()[-3000:]}")
        wait_for("NDEATH", lambda r: r.get("topic") == "spBv1.0/Board/NDEATH/qemu-gw")
        denied = [l for l in (work / "mosquitto.log").read_text().splitlines() if "Denied" in l]
        if denied:
            raise SystemExit(f"aarch64 session: the broker's ACL refused the gateway: {denied}")
        print(f"aarch64 session: {binary.name} under qemu, mTLS: NBIRTH, DBIRTH, {len(ddata)}+ DDATA "
              "decoded by pysparkplug; NDEATH and exit 0 on SIGTERM")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
