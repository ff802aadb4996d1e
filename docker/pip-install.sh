#!/bin/sh
# `pip install`, in the build stage only. On a network whose package index needs a certificate of
# its own, the build passes PIP_CERT_URL (for example a server on the build host's loopback, with
# `docker build --network host`): the certificate is fetched for this one command and removed by
# it, so no layer holds it.
set -eu
if [ -n "${PIP_CERT_URL:-}" ]; then
    trap 'rm -f /tmp/pip-cert.pem' EXIT
    python -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1]).read())' \
        "$PIP_CERT_URL" > /tmp/pip-cert.pem
    export PIP_CERT=/tmp/pip-cert.pem
fi
pip install --no-cache-dir "$@"
