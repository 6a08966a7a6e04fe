// The hub under test, as scripts/browser-test started it, and ways to talk to it as a guest would.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import path from 'node:path';

const run = promisify(execFile);

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests with scripts/browser-test`);
  return value;
}

/** The hub's base URL, e.g. `http://127.0.0.1:40123`. */
export const HUB = required('NOTIFYHUB_URL');
/** The notify socket of guest `web1`, registered with `--guest web1`. */
export const WEB1_SOCKET = required('NOTIFYHUB_WEB1_SOCKET');
/** `shared/vectors/` beside the repository. */
export const VECTORS = required('NOTIFYHUB_VECTORS');
/** Where screenshots go (target/screenshots). */
export const SCREENSHOTS = required('NOTIFYHUB_SCREENSHOTS');

/** How long anything that should happen at once may take: a liveness bound, not a speed test. */
export const LIVENESS = 10_000;

export const url = (p) => new URL(p, HUB).href;
export const vector = (name) => path.join(VECTORS, `${name}.jsonl`);

const SEND = fileURLToPath(new URL('send_datagrams.py', import.meta.url));

/**
 * Sends datagrams to a notify socket from a separate process, as a guest would: the datagrams of
 * a capture file (`{file}`, in its order, `delayMs` apart), then literal ones (`{datagrams}`).
 * With `barrier`, ends with `BARRIER=1` and resolves once the hub has taken them all (but that
 * is a message too: after a shutdown it starts a new boot).
 */
export async function sendDatagrams(socket, { file, datagrams = [], delayMs = 0, barrier = false }) {
  const args = [SEND, '--socket', socket, '--delay-ms', String(delayMs)];
  if (barrier) args.push('--barrier');
  if (file) args.push('--capture', file);
  for (const datagram of datagrams) args.push('--datagram', datagram);
  await run('python3', args, { timeout: LIVENESS });
}

/** Runs the real `systemd-notify` with `args` for the guest at `socket`. */
export async function systemdNotify(socket, args) {
  await run('systemd-notify', args, {
    timeout: LIVENESS,
    env: { ...process.env, NOTIFY_SOCKET: socket },
  });
}

/** Registers guest `name` (POST /api/v1/guests); returns its notify socket path. */
export async function register(name) {
  const response = await fetch(url('/api/v1/guests'), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  const body = await response.json();
  if (response.status !== 201) throw new Error(`registering ${name}: ${response.status} ${body.error}`);
  return body.notify_socket;
}

/** GET an API path as JSON. */
export async function api(p) {
  const response = await fetch(url(p));
  if (!response.ok) throw new Error(`GET ${p}: ${response.status}`);
  return response.json();
}

/** Polls `probe` until it returns a truthy value (which it returns), for at most LIVENESS. */
export async function until(what, probe) {
  const deadline = Date.now() + LIVENESS;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${LIVENESS} ms (last: ${last})`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Waits until `locator`'s text is `text`; fails after LIVENESS with the text it had. */
export async function untilText(locator, text) {
  let seen;
  try {
    await until(`text ${JSON.stringify(text)}`, async () => (seen = await locator.textContent({ timeout: 1000 })) === text);
  } catch (error) {
    throw new Error(`${locator}: expected ${JSON.stringify(text)}, still ${JSON.stringify(seen)}`, { cause: error });
  }
}
