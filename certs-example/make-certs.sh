#!/usr/bin/env bash
# A PKI and a mosquitto configuration for one Sparkplug group: a CA, the
# broker's certificate, one client certificate per edge node (CN = its node
# id), the uplink's (CN = spb-uplink), and a mosquitto config with an ACL
# where each identity may use only its own topics.
#
# usage: certs-example/make-certs.sh OUTDIR [--group G] [--host HOST_ID] [--days N] [NODE_ID...]
#        (defaults: group Plant1, host scada, 30 days, one node gw-01)
#
# OUTDIR/
#   ca.pem ca.key                 the CA (keep ca.key off the boxes)
#   broker/                       ca.pem server.pem server.key mosquitto.conf acl
#   <node id>/                    ca.pem client.pem client.key: copy into that box's /etc/spb-gateway/
#   uplink/                       ca.pem client.pem client.key: for spb-uplink's [mqtt.servers.tls]
#   rogue/                        ca.pem, and client.pem client.key of another CA, CN = the first node (must be refused)
#   client.pem client.key         the first node's, under the names config/example.toml uses
#
# The broker listens on 8883 (edit `listener` in broker/mosquitto.conf) and
# takes each client's identity from its certificate's CN
# (use_identity_as_username): an edge node may publish only its own
# spBv1.0/<group>/{NBIRTH,NDEATH,NDATA}/<node> and {DBIRTH,DDEATH,DDATA}/<node>/+
# and its watermark topic spb-gateway/watermark/<group>/<node>, and receive
# only its own NCMD/DCMD and the Primary Host's STATE; only the uplink may
# send NCMD/DCMD and its STATE. docs/DEPLOY.md has the EMQX equivalent and
# how to rotate the certificates.
# The keys are unencrypted: for trials and tests; a plant's PKI issues its own.
set -euo pipefail
usage="usage: make-certs.sh OUTDIR [--group G] [--host HOST_ID] [--days N] [NODE_ID...]"
out=${1:?$usage}
shift
group=Plant1 host=scada days=30 nodes=()
while (($#)); do
    case $1 in
        --group) group=${2:?$usage}; shift 2 ;;
        --host) host=${2:?$usage}; shift 2 ;;
        --days) days=${2:?$usage}; shift 2 ;;
        -*) echo "$usage" >&2; exit 2 ;;
        *) nodes+=("$1"); shift ;;
    esac
done
((${#nodes[@]})) || nodes=(gw-01)
# Sparkplug ids: no '+', '/' or '#'; here also nothing a shell, a file name
# or the ACL file would read differently.
for id in "$group" "$host" "${nodes[@]}"; do
    [[ $id =~ ^[A-Za-z0-9._-]+$ ]] || { echo "make-certs.sh: '$id': use letters, digits, '.', '_' and '-'" >&2; exit 2; }
done
[[ " ${nodes[*]} " != *" spb-uplink "* ]] || { echo "make-certs.sh: spb-uplink is the uplink's identity" >&2; exit 2; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$out"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }
ca() { # name cn
    key "$1.key"
    openssl req -x509 -new -key "$1.key" -days "$days" -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$1.pem" 2>/dev/null
}
leaf() { # dir cn signer ext
    mkdir -p "$1"
    key "$1/$2.key.tmp"
    openssl req -new -key "$1/$2.key.tmp" -subj "/CN=$2" -out "$1/req.csr" 2>/dev/null
    printf '%b' "$4" > "$1/ext.cnf"
    openssl x509 -req -in "$1/req.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -days "$days" \
        -extfile "$1/ext.cnf" -out "$1/$5.pem" 2>/dev/null
    mv "$1/$2.key.tmp" "$1/$5.key"
    rm -f "$1/req.csr" "$1/ext.cnf"
}
client_ext='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n'
ca ca spb-example-ca
ca rogue-ca spb-rogue-ca
leaf broker localhost ca 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' server
for n in "${nodes[@]}"; do leaf "$n" "$n" ca "$client_ext" client; done
leaf uplink spb-uplink ca "$client_ext" client
leaf rogue "${nodes[0]}" rogue-ca "$client_ext" client
for d in broker uplink rogue "${nodes[@]}"; do cp ca.pem "$d/ca.pem"; done
cp "${nodes[0]}/client.pem" client.pem
cp "${nodes[0]}/client.key" client.key
rm -f ./*.srl rogue-ca.key

cat > broker/mosquitto.conf <<EOF
# mosquitto 2 for one Sparkplug group ($group): mTLS only, identity = the
# client certificate's CN, topics per identity in the ACL beside this file.
per_listener_settings false
allow_anonymous false
# Send each message at once: without it a reply that follows another message
# waits for the delayed ACK (a command's confirmation took 44 ms, not 0.6 ms).
set_tcp_nodelay true
listener 8883
cafile $out/broker/ca.pem
certfile $out/broker/server.pem
keyfile $out/broker/server.key
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
acl_file $out/broker/acl
# A Sparkplug birth holds every metric: allow up to 16 MiB (the gateway's
# mqtt.max_packet_size must not be larger).
max_packet_size 16777216
EOF

{
    echo "# Who may use which topic, by client certificate CN (mosquitto acl_file)."
    echo "# A publish an identity may not make is dropped by the broker and logged"
    echo "# (\"Denied PUBLISH\"); a subscription it may not make is refused."
    echo
    echo "# The uplink, Primary Host '$host': reads everything Sparkplug, sends"
    echo "# commands and its own STATE."
    echo "user spb-uplink"
    echo "topic read spBv1.0/#"
    echo "topic write spBv1.0/$group/NCMD/+"
    echo "topic write spBv1.0/$group/DCMD/+/+"
    echo "topic readwrite spBv1.0/STATE/$host"
    for n in "${nodes[@]}"; do
        echo
        echo "# Edge node $n: its own births, deaths and data, its watermark;"
        echo "# its own commands and the Primary Host's STATE."
        echo "user $n"
        for t in NBIRTH NDEATH NDATA; do echo "topic write spBv1.0/$group/$t/$n"; done
        for t in DBIRTH DDEATH DDATA; do echo "topic write spBv1.0/$group/$t/$n/+"; done
        echo "topic write spb-gateway/watermark/$group/$n"
        echo "topic read spBv1.0/$group/NCMD/$n"
        echo "topic read spBv1.0/$group/DCMD/$n/+"
        echo "topic read spBv1.0/STATE/$host"
    done
} > broker/acl
chmod 644 broker/acl broker/mosquitto.conf
echo "certificates and broker configuration in $out: broker/ uplink/ ${nodes[*]} (group $group, host $host)"
