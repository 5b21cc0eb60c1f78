#!/usr/bin/env bash
# `make demo`: a private mosquitto on a free loopback port, spb-gateway with
# config/demo.toml (two simulated machines), and `spb-gateway watch` showing the
# decoded Sparkplug traffic. Ctrl-C stops everything cleanly (the gateway
# publishes NDEATH first). DEMO_SECONDS=N stops by itself after N seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh >/dev/null
cargo build --release -q --bin spb-gateway
bin=target/release/spb-gateway

dir=$(mktemp -d -t spb-demo.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$dir/mosquitto.conf"
# The broker and the watcher get their own sessions: Ctrl-C signals the whole
# process group, and a broker that dies with the gateway would publish its
# Will (a second NDEATH) before the gateway's DISCONNECT arrives. The trap
# below stops them in order instead: gateway (NDEATH, DISCONNECT), watcher, broker.
setsid mosquitto -c "$dir/mosquitto.conf" > "$dir/mosquitto.log" 2>&1 &
mq=$!
gw=""
watcher=""
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$gw" ] && kill -0 "$gw" 2>/dev/null; then
        kill -TERM "$gw" && wait "$gw" 2>/dev/null || true
        sleep 0.3   # let the watcher print the NDEATH
    fi
    [ -n "${watcher:-}" ] && kill "$watcher" 2>/dev/null && wait "$watcher" 2>/dev/null || true
    kill "$mq" 2>/dev/null && wait "$mq" 2>/dev/null || true
    echo
    echo "demo stopped; gateway log: $dir/gateway.log"
}
trap cleanup EXIT INT TERM

for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

# The watcher subscribes first so it sees the births; --rebirth covers a race.
setsid "$bin" watch --broker-port "$port" --rebirth ${DEMO_SECONDS:+--seconds "$DEMO_SECONDS"} &
watcher=$!
sleep 0.5

cat <<TXT
== spb-gateway demo: broker mqtt://127.0.0.1:$port, node "Demo Plant/gw-demo"
   press: pressure (deadband 2.0), strokes, state, 4 zone temperatures
   oven:  temperature (1% deadband), door; unreachable 6 s every 25 s (DDEATH, then DBIRTH)
   Ctrl-C to stop${DEMO_SECONDS:+ (or wait ${DEMO_SECONDS}s)}.
TXT
"$bin" --config config/demo.toml --broker-port "$port" --data-dir "$dir/state" --log-level warn \
    2> "$dir/gateway.log" &
gw=$!
wait "$watcher" || true
