// Node side of throughput.sh: node node.mjs PKG_DIR FILE -> {"bytes","secs","json_len"}
import { readFileSync, openSync, readSync, closeSync } from 'node:fs';
const [pkg, path] = process.argv.slice(2);
const m = await import(`${pkg}/notifyhub_wasm.js`);
m.initSync({ module: readFileSync(`${pkg}/notifyhub_wasm_bg.wasm`) });
const buf = new Uint8Array(1 << 20);
const fd = openSync(path, 'r');
const t0 = performance.now();
const reader = new m.LogReader('bench');
let bytes = 0;
for (;;) {
    const n = readSync(fd, buf, 0, buf.length, null);
    if (n === 0) break;
    bytes += n;
    reader.push(buf.subarray(0, n));
}
const json = reader.finish();
const secs = (performance.now() - t0) / 1000;
closeSync(fd);
console.log(JSON.stringify({ bytes, secs, json_len: Buffer.byteLength(json) }));
