#!/bin/bash
# Runs inside the guest `cargo xtask ktls` boots: a kernel with TLS
# (`TCP_ULP "tls"`), the host's root file system mounted read-only, /tmp
# fresh. Drives the Keystone binary in $1 over kernel TLS with curl,
# openssl s_client and Python's ssl, and prints one `KTLS ok:` or
# `KTLS FAIL:` line per check, then `KTLS RESULT: pass|FAIL`.
set -u
K=$1
W=/tmp/ktls
mkdir -p $W/app/public && cd $W || exit 1
fail=0
ok() { echo "KTLS ok: $*"; }
bad() { echo "KTLS FAIL: $*"; fail=1; }
sum() { sha256sum | cut -d' ' -f1; }

echo "KTLS kernel: $(uname -r); ULPs: $(cat /proc/sys/net/ipv4/tcp_available_ulp)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout key.pem -out cert.pem -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost 2>/dev/null || bad "openssl req"
head -c 1048576 /dev/urandom > app/public/big.bin
head -c 3000 /dev/urandom > app/public/small.bin
head -c 200000 /dev/urandom > body.bin
cat > app/app.lua <<'EOF'
return {
  static = { ["/public/"] = "./public" },
  upstreams = { files = { peers = { "127.0.0.1:9001" } } },
  routes = {
    ["GET /up/{*path}"] = function(ctx)
      ctx.upstream = "files"
      ctx.upstream_path = "/" .. ctx.params.path
    end,
    ["GET /hello"] = function(ctx)
      ctx.body = "hello " .. ctx.scheme .. " " .. (ctx.tls and ctx.tls.protocol or "-")
    end,
    ["POST /echo"] = function(ctx) ctx.body = ctx.request.body or "nil" end,
    ["GET /stream"] = function(ctx)
      local n = 0
      ctx.body = function()
        n = n + 1
        if n <= 64 then return string.rep("x", 1000) end
      end
    end,
  },
}
EOF
(cd app/public && exec python3 -m http.server --bind 127.0.0.1 9001 > /dev/null 2>&1) &
BACKEND=$!
"$K" serve app/app.lua --listen 127.0.0.1:8080 --tls-listen 127.0.0.1:8443 \
  --tls-cert cert.pem --tls-key key.pem --admin 127.0.0.1:9090 --workers 1 \
  > server.log 2>&1 &
PID=$!
for _ in $(seq 1 150); do
  curl -s -o /dev/null http://127.0.0.1:8080/hello && break
  sleep 0.2
done
grep -q "kernel TLS offered" server.log && ok "kernel TLS offered at start" \
  || bad "kernel TLS not offered: $(grep -i 'kernel TLS' server.log)"

C="curl -s --max-time 30 --cacert cert.pem --resolve localhost:8443:127.0.0.1"
U=https://localhost:8443
big=$(sum < app/public/big.bin); small=$(sum < app/public/small.bin); body=$(sum < body.bin)
# Each protocol with each cipher the kernel takes (AES-GCM-128/256, ChaCha20-Poly1305).
for v in "1.3 TLS_AES_128_GCM_SHA256" "1.3 TLS_AES_256_GCM_SHA384" "1.3 TLS_CHACHA20_POLY1305_SHA256" \
         "1.2 ECDHE-ECDSA-AES128-GCM-SHA256" "1.2 ECDHE-ECDSA-AES256-GCM-SHA384" "1.2 ECDHE-ECDSA-CHACHA20-POLY1305"; do
  set -- $v
  if [ "$1" = 1.3 ]; then P="--tlsv1.3 --tls13-ciphers $2"; else P="--tlsv1.2 --tls-max 1.2 --ciphers $2"; fi
  r=$($C $P $U/hello); [ "$r" = "hello https TLSv$1" ] && ok "$v: GET /hello" || bad "$v: GET /hello: '$r'"
  [ "$($C $P $U/public/big.bin | sum)" = "$big" ] && ok "$v: 1 MiB static file intact" || bad "$v: 1 MiB static file differs"
  [ "$($C $P $U/public/small.bin | sum)" = "$small" ] && ok "$v: 3000-byte static file intact" || bad "$v: small static file differs"
  [ "$($C $P --data-binary @body.bin $U/echo | sum)" = "$body" ] && ok "$v: 200000-byte body echoed" || bad "$v: body echo differs"
  [ "$($C $P $U/up/big.bin | sum)" = "$big" ] && ok "$v: 1 MiB proxied body intact" || bad "$v: proxied body differs"
  n=$($C $P $U/stream | wc -c); [ "$n" = 64000 ] && ok "$v: streamed 64000 bytes" || bad "$v: stream gave $n bytes"
done
r=$($C $U/hello $U/public/small.bin $U/hello -w '|%{num_connects}' -o /dev/null -o /dev/null -o /dev/null)
[ "$r" = "|1|0|0" ] && ok "three requests on one connection" || bad "keep-alive: $r"
r=$($C -r 100-199 $U/public/big.bin | wc -c); [ "$r" = 100 ] && ok "a range of the file (100 bytes)" || bad "range: $r bytes"

python3 - <<'EOF' && ok "python ssl: pipelined requests, then close_notify" || bad "python ssl"
import socket, ssl
c = ssl.create_default_context(cafile="cert.pem")
s = c.wrap_socket(socket.create_connection(("127.0.0.1", 8443)), server_hostname="localhost")
s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
data = b""
while data.count(b"hello https TLSv1.3") < 2:
    data += s.recv(65536)
# The client's close_notify reaches the kernel's receive as a control
# record: the server must end the connection, not hang.
s.settimeout(20)
s.unwrap()
EOF
for v in -tls1_2 -tls1_3; do
  r=$(printf 'GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' \
    | timeout 30 openssl s_client -quiet -connect 127.0.0.1:8443 -servername localhost -CAfile cert.pem $v 2>/dev/null | tail -1)
  case "$r" in "hello https TLSv1."*) ok "s_client $v: $r" ;; *) bad "s_client $v: '$r'" ;; esac
done
# A request interrupted by the client's reset mid-download leaves nothing behind.
timeout 5 curl -s --cacert cert.pem --resolve localhost:8443:127.0.0.1 --limit-rate 20k $U/public/big.bin -o /dev/null
sleep 1

m=$(curl -s http://127.0.0.1:9090/metrics)
k=$(echo "$m" | sed -n 's/^keystone_tls_connections_total{path="ktls"} //p')
u=$(echo "$m" | sed -n 's/^keystone_tls_connections_total{path="userspace"} //p')
[ "${k:-0}" -gt 20 ] && [ "${u:-1}" = 0 ] && ok "metrics: $k connections on ktls, $u in user space" \
  || bad "metrics: ktls ${k:-?}, userspace ${u:-?}"
sp=$(echo "$m" | sed -n 's/^keystone_proxied_spliced_bytes_total //p')
# Six 1 MiB proxied bodies: all but what came with each upstream head (sent
# from the buffer) splice.
[ "${sp:-0}" -ge 5242880 ] && ok "proxied bodies spliced through kernel TLS: $sp of 6291456 bytes" || bad "proxied bytes spliced: ${sp:-?} of 6291456"
open=$(echo "$m" | sed -n 's/^keystone_connections_open //p')
[ "${open:-1}" = 0 ] && ok "no connection left open" || bad "connections open: ${open:-?}"
tx=$(awk '$1 == "TlsTxSw" {print $2}' /proc/net/tls_stat); rx=$(awk '$1 == "TlsRxSw" {print $2}' /proc/net/tls_stat)
de=$(awk '$1 == "TlsDecryptError" {print $2}' /proc/net/tls_stat)
[ "${tx:-0}" -gt 20 ] && [ "${rx:-0}" -gt 20 ] && ok "the kernel sealed and opened: TlsTxSw $tx, TlsRxSw $rx" \
  || bad "tls_stat TlsTxSw ${tx:-?} TlsRxSw ${rx:-?}"
[ "${de:-1}" = 0 ] && ok "TlsDecryptError 0" || bad "TlsDecryptError ${de:-?}"
kill -TERM $PID; wait $PID; st=$?
kill $BACKEND
[ $st = 0 ] && ok "server drained and exited 0" || bad "server exit $st"
if grep -q " error \| warn " server.log; then echo "--- server log"; cat server.log; fi
[ $fail = 0 ] && echo "KTLS RESULT: pass" || echo "KTLS RESULT: FAIL"
