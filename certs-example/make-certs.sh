#!/usr/bin/env bash
# Generates a throw-away PKI for trying mTLS against a private mosquitto:
#   ca.pem / ca.key          the CA both sides trust
#   server.pem / server.key  broker certificate, SAN localhost + 127.0.0.1
#   client.pem / client.key  gateway certificate, CN = the edge node id
#   rogue-ca.pem, rogue-client.pem / .key   signed by another CA (must be refused)
# Usage: certs-example/make-certs.sh OUTDIR [CLIENT_CN]
# Never use these on a plant network: the keys are unprotected and short-lived.
set -euo pipefail
out=${1:?usage: make-certs.sh OUTDIR [CLIENT_CN]}
cn=${2:-gw-01}
mkdir -p "$out"
cd "$out"
days=30
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=spb-example-ca" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=spb-rogue-ca" -keyout rogue-ca.key -out rogue-ca.pem 2>/dev/null
leaf() { # name cn signer extfile
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
        -keyout "$1.key" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -days $days \
        -extfile "$4" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr"
}
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
printf 'extendedKeyUsage=clientAuth\n' > client.ext
leaf server localhost ca server.ext
leaf client "$cn" ca client.ext
leaf rogue-client "$cn" rogue-ca client.ext
rm -f server.ext client.ext ./*.srl
chmod 600 ./*.key
echo "certificates in $(pwd): ca.pem server.pem client.pem rogue-client.pem (+ keys)"
