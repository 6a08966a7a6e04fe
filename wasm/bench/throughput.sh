#!/usr/bin/env bash
# A benchmark, not a test: MB/s of LogReader natively, in wasm under Node, and in wasm in headless
# Chromium, on one ~100 MB capture-format log, all in one run.
#   wasm/bench/throughput.sh [MB]      (default 100; the bundle is $WASM_PKG, else web/assets/wasm/)
# The log, target/bench/throughput.jsonl, repeats shared/vectors/*.jsonl with increasing seq/t_ms.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MB="${1:-100}"
PKG="${WASM_PKG:-$ROOT/web/assets/wasm}"
BENCH="$ROOT/target/bench"
LOG="$BENCH/throughput.jsonl"
mkdir -p "$BENCH"
python3 - "$LOG" "$MB" "$ROOT"/../shared/vectors/*.jsonl <<'PY'
import json, sys
out, mb, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
lines = [json.loads(l) for f in sorted(files) for l in open(f, encoding='utf-8') if l.strip()]
target, size, seq, t = mb * 1_000_000, 0, 0, 0.0
with open(out, 'w', encoding='utf-8') as w:
    while size < target:
        for rec in lines:
            seq += 1; t += 1.5
            rec = dict(rec, seq=seq, t_ms=round(t, 1))
            line = json.dumps(rec, ensure_ascii=False) + '\n'
            w.write(line); size += len(line.encode())
PY
BYTES=$(wc -c <"$LOG")
echo "throughput: $LOG, $BYTES B; bundle $PKG ($(wc -c <"$PKG/notifyhub_wasm_bg.wasm") B .wasm)"

cargo build -q --release -p notifyhub-wasm --example throughput
NATIVE=$("$ROOT/target/release/examples/throughput" "$LOG")
NODE=$(node "$ROOT/wasm/bench/node.mjs" "$PKG" "$LOG")

SITE=$(mktemp -d)
SERVER_PID=
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$SITE"' EXIT
cp "$ROOT/wasm/bench/page.html" "$SITE/"
cp -r "$PKG" "$SITE/pkg"
ln -s "$LOG" "$SITE/log.jsonl"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$SITE" >/dev/null 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    sleep 0.1
done
CHROMIUM=$(PLAYWRIGHT_FROM="$ROOT/tests/browser/package.json" \
    node "$ROOT/wasm/bench/chromium.mjs" "http://127.0.0.1:$PORT/page.html?src=log.jsonl")

node - "$NATIVE" "$NODE" "$CHROMIUM" <<'JS'
const [native, node, chromium] = process.argv.slice(2).map((s) => JSON.parse(s));
const mbps = (r) => r.bytes / 1e6 / r.secs;
for (const [name, r] of [['native', native], ['wasm node', node], ['wasm chromium', chromium]]) {
    if (r.json_len !== native.json_len) throw new Error(`${name}: JSON length ${r.json_len} != ${native.json_len}`);
    console.log(`throughput: ${name.padEnd(14)} ${mbps(r).toFixed(1).padStart(7)} MB/s  ${r.secs.toFixed(2)} s  ${(mbps(r) / mbps(native)).toFixed(2)}x native`);
}
JS
