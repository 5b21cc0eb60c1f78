#!/usr/bin/env bash
# `make demo`: a private mosquitto on a free loopback port, spb-gateway with
# config/demo.toml (three simulated machines), `spb-gateway watch` showing the
# decoded Sparkplug traffic, and spb-uplink with config/demo-uplink.toml as the
# Primary Host, storing into a private PostgreSQL cluster and printing the
# filler's live OEE every 5 s beside the traffic. Ctrl-C stops everything
# cleanly (the gateway publishes NDEATH first) and prints the filler's shift
# report. DEMO_SECONDS=N stops by itself after N seconds. SPB_DEMO_BIN=DIR
# takes the two binaries from DIR instead of building them (the tests do).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh >/dev/null
if [ -z "${SPB_DEMO_BIN:-}" ]; then
    cargo build --release -q --features uplink --bin spb-gateway --bin spb-uplink
    SPB_DEMO_BIN=target/release
fi
bin=$SPB_DEMO_BIN/spb-gateway
uplink=$SPB_DEMO_BIN/spb-uplink

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

dir=$(mktemp -d -t spb-demo.XXXXXX)
port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n' "$port" > "$dir/mosquitto.conf"

# PostgreSQL of the demo's own, in a temporary directory on a free port (as
# root it runs as the postgres user: initdb refuses root).
pgdir=$(mktemp -d -t spb-demo-pg.XXXXXX)
pgport=$(free_port)
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$pgdir"
as_pg "$pgbin/initdb" -A trust -U postgres --no-sync -D "$pgdir/data" > "$pgdir/initdb.log" 2>&1
as_pg "$pgbin/pg_ctl" -w -t 30 -l "$pgdir/server.log" -D "$pgdir/data" \
    -o "-p $pgport -k $pgdir -c listen_addresses=127.0.0.1 -c fsync=off" start > /dev/null

http=$(free_port)
sed -e "s/^port = 1883$/port = $port/" \
    -e "s/^url = .*/url = \"host=127.0.0.1 port=$pgport user=postgres dbname=postgres\"/" \
    -e "s/^listen = .*/listen = \"127.0.0.1:$http\"/" \
    config/demo-uplink.toml > "$dir/uplink.toml"

# The broker and the watcher get their own sessions: Ctrl-C signals the whole
# process group, and a broker that dies with the gateway would publish its
# Will (a second NDEATH) before the gateway's DISCONNECT arrives. The trap
# below stops them in order instead: gateway (NDEATH, DISCONNECT), watcher,
# the OEE view and the uplink, broker, database.
setsid mosquitto -c "$dir/mosquitto.conf" > "$dir/mosquitto.log" 2>&1 &
mq=$!
gw=""
watcher=""
up=""
view=""
state=""
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$gw" ] && kill -0 "$gw" 2>/dev/null; then
        kill -TERM "$gw" && wait "$gw" 2>/dev/null || true
        sleep 0.3   # let the watcher print the NDEATH
    fi
    [ -n "$watcher" ] && kill "$watcher" 2>/dev/null && wait "$watcher" 2>/dev/null || true
    [ -n "$view" ] && kill "$view" 2>/dev/null && wait "$view" 2>/dev/null || true
    [ -n "$state" ] && kill "$state" 2>/dev/null && wait "$state" 2>/dev/null || true
    if [ -n "$up" ] && kill -0 "$up" 2>/dev/null; then
        echo
        echo "== the filler's shift so far (spb-uplink oee --machine filler --shift):"
        "$uplink" oee --machine filler --shift --config "$dir/uplink.toml" || true
        kill -TERM "$up" && wait "$up" 2>/dev/null || true
    fi
    kill "$mq" 2>/dev/null && wait "$mq" 2>/dev/null || true
    as_pg "$pgbin/pg_ctl" -m immediate -D "$pgdir/data" stop > /dev/null 2>&1 || true
    rm -rf "$pgdir"
    echo
    echo "demo stopped; logs: $dir/gateway.log, $dir/uplink.log"
}
trap cleanup EXIT INT TERM

wait_port "$port"
setsid "$uplink" --config "$dir/uplink.toml" > "$dir/uplink.log" 2>&1 &
up=$!
wait_port "$http" || { cat "$dir/uplink.log"; exit 1; }

# The watcher subscribes first so it sees the births; --rebirth covers a race.
setsid "$bin" watch --broker-port "$port" --rebirth &
watcher=$!
sleep 0.5

cat <<TXT
== spb-gateway demo: broker mqtt://127.0.0.1:$port, node "Demo Plant/gw-demo"
   press:  pressure (deadband 2.0), strokes, state, 4 zone temperatures
   oven:   temperature (1% deadband), door; unreachable 6 s every 25 s (DDEATH, then DBIRTH)
   filler: a machine cycling every second, a fault every 30 s, 5 % rejects
   spb-uplink (Primary Host "demo-host") stores it all in PostgreSQL on port $pgport
   and prints the filler's OEE for the current shift every 5 s (http://127.0.0.1:$http/metrics),
   and what its tables say of the devices whenever that changes (sp_device_state, sp_metric_last).
   Ctrl-C to stop${DEMO_SECONDS:+ (or wait ${DEMO_SECONDS}s)}.
TXT
"$bin" --config config/demo.toml --broker-port "$port" --data-dir "$dir/state" --log-level warn \
    2> "$dir/gateway.log" &
gw=$!

# The live OEE: the uplink's gauges for the current shift, read from /metrics.
(
    while sleep 5; do
        curl -s "http://127.0.0.1:$http/metrics" | awk '
            /^spb_uplink_oee\{machine="filler"/ {
                match($0, /shift="[^"]*"/); shift = substr($0, RSTART + 7, RLENGTH - 8)
                match($0, /figure="[^"]*"/); f = substr($0, RSTART + 8, RLENGTH - 9)
                v[f] = sprintf("%5.1f%%", $NF * 100)
            }
            /^spb_uplink_oee_cycles_total\{machine="filler"\}/ { cycles = $NF }
            END {
                if (cycles == "") print "== OEE filler: waiting for the first computed interval"
                else printf "== OEE filler, shift %s: OEE %s  A %s  P %s  Q %s  cycles %d\n",
                    shift, v["oee"], v["availability"], v["performance"], v["quality"], cycles
            }'
    done
) &
view=$!
# What the tables say of the devices: a line each time sp_device_state
# changes (the oven's outages: DDEATH, its metrics STALE in sp_metric_last).
(
    last=""
    while sleep 1; do
        now=$("$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -d postgres -Atq -c "
            SELECT string_agg(CASE WHEN d.online THEN d.device_id || ' online'
                   ELSE d.device_id || ' offline since ' || to_char(d.last_death, 'HH24:MI:SS') || ' UTC ('
                        || d.last_cause || '), ' || (SELECT count(*) FROM sp_metric_last l
                        WHERE l.node_id = d.node_id AND l.device_id = d.device_id AND l.is_stale)
                        || ' metrics STALE' END, '; ' ORDER BY d.device_id)
            FROM sp_device_state d" 2>/dev/null) || continue
        if [ -n "$now" ] && [ "$now" != "$last" ]; then
            echo "== sp_device_state: $now"
            last=$now
        fi
    done
) &
state=$!
if [ -n "${DEMO_SECONDS:-}" ]; then
    sleep "$DEMO_SECONDS"   # then the trap stops it all, NDEATH first
else
    wait "$watcher" || true
fi
