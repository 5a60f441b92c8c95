// Drives one headless Chromium (playwright-core) for tests/test_web_demo.py and bench/web_demo.py: JSON commands, one
// a line, on stdin; one JSON answer a line on stdout ({"id", "ok", "value"} or {"id", "ok": false, "error"}).
// Not served to the page. Commands:
//   {"op": "launch", "chromium": PATH, "fakeVideo": Y4M_OR_NULL}     start the browser (once)
//   {"op": "open", "url": URL, "camera": true|false}                 a fresh context and page (camera allowed or not)
//   {"op": "eval", "fn": "async (arg) => ...", "arg": ANY}            run a function in the page, return its value
//   {"op": "files", "selector": CSS, "paths": [...]}                 choose files in an <input type=file>
//   {"op": "screenshot", "path": PNG}                                the page, as a user sees it
//   {"op": "requests"}                                               every URL the browser asked for so far
//   {"op": "close"}                                                  close the browser and exit
import {createInterface} from 'node:readline';
import {createRequire} from 'node:module';

const require = createRequire(import.meta.url);
const {chromium} = require('playwright-core');

// Chromium as root in a container, with nothing reaching past 127.0.0.1 on its own (no component updates, sync,
// field trials or QUIC probes).
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];

let browser = null;
let context = null;
let page = null;
const requests = [];
const logs = [];

function isLocal(url) {
  if (/^(data|blob|about):/.test(url)) return true;
  try {
    return new URL(url).hostname === '127.0.0.1';
  } catch {
    return false;
  }
}

async function handle(cmd) {
  switch (cmd.op) {
    case 'launch': {
      const args = [...FLAGS];
      if (cmd.fakeVideo) {
        args.push('--use-fake-device-for-media-stream', `--use-file-for-fake-video-capture=${cmd.fakeVideo}`);
      }
      browser = await chromium.launch({executablePath: cmd.chromium, headless: true, args});
      browser.on('disconnected', () => logs.push('browser disconnected'));
      return browser.version();
    }
    case 'open': {
      if (context) await context.close();
      context = await browser.newContext({viewport: {width: 1100, height: 900}});
      if (cmd.camera) await context.grantPermissions(['camera'], {origin: new URL(cmd.url).origin});
      context.on('request', (r) => requests.push(r.url()));
      // Anything not on 127.0.0.1 is recorded (above) and refused, so a test sees it and nothing leaves the machine.
      await context.route((url) => !isLocal(url.href), (route) => route.abort());
      page = await context.newPage();
      page.on('console', (m) => logs.push(`console.${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
      await page.goto(cmd.url);
      await page.waitForFunction(() => window.demo !== undefined);
      return page.url();
    }
    case 'eval': // the function's source and its argument, as one expression (arguments of a few MB are fine)
      return page.evaluate(`(${cmd.fn})(${JSON.stringify(cmd.arg ?? null)})`);
    case 'files':
      await page.setInputFiles(cmd.selector, cmd.paths);
      return null;
    case 'screenshot':
      await page.screenshot({path: cmd.path, fullPage: cmd.fullPage ?? false});
      return cmd.path;
    case 'requests':
      return requests;
    case 'logs':
      return logs;
    case 'close':
      if (browser) await browser.close();
      process.exit(0);
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const lines = createInterface({input: process.stdin});
for await (const line of lines) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  let answer;
  try {
    answer = {id: cmd.id, ok: true, value: await handle(cmd)};
  } catch (error) {
    answer = {id: cmd.id, ok: false, error: String(error?.stack || error), logs: logs.slice(-20)};
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
}
if (browser) await browser.close();
