#!/bin/sh
# Make a throwaway-or-real certificate set for configs/mosquitto/: a CA, the broker's certificate and one
# client certificate per common name (the CN is the client's user name in the `acl` file).
#
#   sh configs/mosquitto/make-certs.sh OUT_DIR BROKER_NAME [CLIENT_CN ...]
#   sh configs/mosquitto/make-certs.sh /etc/mosquitto/storelens broker.store-001.lan \
#       device.store-001.kiosk-1 pos.store-001 chain-publisher admin.store-001
#
# BROKER_NAME is the host name (or IP address) devices connect to: it goes into the broker certificate's
# subjectAltName, which clients check. Keep ca.key offline after making the certificates; give each client
# only its own <CN>.pem / <CN>.key and ca.pem (mqtt.tls.cert_file, key_file, ca_file). Keys are ECDSA P-256.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 OUT_DIR BROKER_NAME [CLIENT_CN ...]" >&2; exit 2; }
out=$1; broker=$2; shift 2
days=${DAYS:-825}
mkdir -p "$out"
cd "$out"
umask 077
if [ ! -f ca.key ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$days" \
        -subj "/CN=StoreLens store CA" -keyout ca.key -out ca.pem 2>/dev/null
fi
case $broker in
    *[!0-9.]*) san="DNS:$broker" ;;
    *) san="IP:$broker" ;;
esac
sign() {  # sign NAME CN EXTENSIONS
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$2" -keyout "$1.key" \
        -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
sign server "$broker" "subjectAltName=$san
extendedKeyUsage=serverAuth"
for cn in "$@"; do
    sign "$cn" "$cn" "extendedKeyUsage=clientAuth"
done
chmod 644 ca.pem ./*.pem
echo "certificates in $out: ca.pem, server.pem/.key, $*"
