#!/bin/sh
# Run inside "unshare -r -n" as an unprivileged user (tests/test_rootless.py does): a whole
# private network in a user-owned network namespace, no real root anywhere. Prints what the
# client got.
set -eu
python=$1; root=$2; work=$3
ip link set lo up
ip -6 route add local fd75:7265:6c61:7900::/64 dev lo
cd "$work"
"$python" -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>&1 &
web=$!
cat > urelay.ini <<INI
[urelay]
state = memory
connection_log = connections.jsonl
[socks]
listen =
[dns]
listen = udp:53:interface=\:\:1
upstream = 127.0.0.1
[control]
listen =
[transparent lan]
listen = tcp6:80:interface=\:\:
allow_local = yes
[rule web]
match = ip 127.0.0.1/32 port 80
rewrite = port 8080
INI
PYTHONPATH="$root" "$python" -c "from twisted.scripts.twistd import run; run()" \
    --nodaemon --pidfile= urelay --config urelay.ini >urelay.log 2>&1 &
relay=$!
trap 'kill $web $relay 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q "transparent-lan listening" urelay.log 2>/dev/null && break; sleep 0.05; done
# The name spells 127.0.0.1: its cookie leads there; the rule moves port 80 to the web server's 8080.
cookie=$(dig @::1 +short AAAA ip4-127-0-0-1.u-relay.home.arpa)
echo "cookie $cookie"
"$python" - "$cookie" <<'PY'
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=10)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
print(s.recv(100).split(b"\r\n")[0].decode())
PY
