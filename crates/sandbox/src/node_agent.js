'use strict';
// Cloister's NodeLTS agent. It speaks the same JSON lines as agent.py on fd 4 (a socketpair end
// the supervisor passed in; agent.py execs this file inside the finished jail), runs JavaScript
// with REPL semantics in the sandbox's one global scope, and serves file requests confined to
// /mnt/data.
//
// REPL semantics (see docs/guide.md, "NodeLTS pools"):
// - the completion value of a cell is its result: `util.inspect` of it, none for `undefined`;
// - state persists: every top-level declaration of a cell lands in the global scope; `let`,
//   `const` and `class` become `var` bindings there, so a cell that is run again (or declares a
//   name an earlier cell declared) does not fail with "Identifier has already been declared"
//   (`const` is then not read-only: the one divergence);
// - top-level `await`: a cell that uses it runs as an async function whose declarations are
//   hoisted to the global scope and whose last expression is its value (as Node's REPL does);
// - console.* and process.stdout/stderr.write are captured (capped) into the reply;
// - a synchronous loop is stopped at the timeout by V8 (vm's `timeout`); an awaited promise
//   that does not settle in time is abandoned and the cell reported as timed out. Code that
//   blocks the event loop after an `await` cannot be stopped from inside: the supervisor then
//   interrupts and kills the sandbox, and the session is replaced.
const fs = require('fs');
const path = require('path');
const vm = require('vm');
const util = require('util');
const net = require('net');
const { Console } = require('console');
const { createRequire } = require('module');
const { StringDecoder } = require('string_decoder');

const PROTO_FD = 4;
const DATA = '/mnt/data';
const DEFAULT_MAX_OUTPUT = 65536;
const DEFAULT_TIMEOUT_MS = 220000;
const MAX_RESULT = 1 << 20;
const MAX_LIST_BYTES = 15 << 20;
const UPLOAD_PREFIX = '.cloister-upload-';
const CELL = 'cell';

// The session's own variables (see agent.py's _exec_node): set now, never in the environment
// this process was started with.
{
  const fd = Number(process.env.CLOISTER_SECRET_ENV_FD);
  delete process.env.CLOISTER_SECRET_ENV_FD;
  if (Number.isInteger(fd) && fd > 2) {
    try {
      Object.assign(process.env, JSON.parse(fs.readFileSync(fd, 'utf8')));
    } catch (e) {
      /* nothing to set */
    }
    try {
      fs.closeSync(fd);
    } catch (e) {}
  }
}

let acorn = null;
try {
  acorn = require('acorn');
} catch (e) {
  acorn = null;
}

try {
  process.chdir(DATA);
} catch (e) {
  /* no /mnt/data: file requests will say so */
}

// --- output capture ------------------------------------------------------------------------
class Capture {
  constructor() {
    this.buf = '';
    this.limit = 4 * DEFAULT_MAX_OUTPUT;
  }
  start(limit) {
    this.buf = '';
    this.limit = limit;
  }
  write(s) {
    const room = this.limit - this.buf.length;
    if (room > 0) this.buf += s.length > room ? s.slice(0, room) : s;
  }
  take() {
    const b = this.buf;
    this.buf = '';
    return b;
  }
}
const OUT = new Capture();
const ERR = new Capture();

function chunkText(chunk, encoding) {
  if (typeof chunk === 'string') return chunk;
  try {
    return Buffer.from(chunk).toString(typeof encoding === 'string' ? encoding : 'utf8');
  } catch (e) {
    return String(chunk);
  }
}

function capturingWrite(cap) {
  return function write(chunk, encoding, cb) {
    cap.write(chunkText(chunk, encoding));
    const done = typeof encoding === 'function' ? encoding : cb;
    if (typeof done === 'function') process.nextTick(done);
    return true;
  };
}
process.stdout.write = capturingWrite(OUT);
process.stderr.write = capturingWrite(ERR);
globalThis.console = new Console({ stdout: process.stdout, stderr: process.stderr, colorMode: false });
// `require` resolves from /mnt/data, then the runtime's node_modules (NODE_PATH).
globalThis.require = createRequire(path.join(DATA, '[cell]'));

function stackOf(e) {
  if (e instanceof Error || (e && typeof e.stack === 'string')) {
    const lines = String(e.stack || e).split('\n');
    const out = [];
    for (const l of lines) {
      // The agent's own frames (and vm's) are not the user's business.
      if (/node_agent\.js|node:vm|node:internal/.test(l)) break;
      out.push(l);
    }
    return out.join('\n');
  }
  return 'Uncaught ' + util.inspect(e);
}

process.on('uncaughtException', (e) => ERR.write('Uncaught ' + stackOf(e) + '\n'));
process.on('unhandledRejection', (e) => ERR.write('Unhandled rejection: ' + stackOf(e) + '\n'));

// --- text limits (the supervisor's caps, see exec_reply_cap in lib.rs) -----------------------
function fit(text, limit) {
  text = text.length > limit ? text.slice(0, limit) : text;
  const budget = 4 * limit + 2;
  if (6 * text.length <= budget) return text;
  while (text && Buffer.byteLength(JSON.stringify(text)) > budget) {
    text = text.slice(0, Math.floor((text.length * 2) / 3));
  }
  return text;
}

// --- cells ---------------------------------------------------------------------------------
function parse(src, topLevelAwait) {
  return acorn.parse(src, {
    ecmaVersion: 'latest',
    sourceType: 'script',
    allowHashBang: true,
    allowAwaitOutsideFunction: topLevelAwait,
  });
}

function patternNames(p, out) {
  if (!p) return out;
  switch (p.type) {
    case 'Identifier':
      out.push(p.name);
      break;
    case 'ObjectPattern':
      for (const prop of p.properties) patternNames(prop.type === 'RestElement' ? prop.argument : prop.value, out);
      break;
    case 'ArrayPattern':
      for (const el of p.elements) patternNames(el, out);
      break;
    case 'RestElement':
      patternNames(p.argument, out);
      break;
    case 'AssignmentPattern':
      patternNames(p.left, out);
      break;
    default:
      break;
  }
  return out;
}

function applyEdits(src, edits) {
  edits.sort((a, b) => b.start - a.start);
  let out = src;
  for (const e of edits) out = out.slice(0, e.start) + e.text + out.slice(e.end);
  return out;
}

// The source to run for a cell: { code, async }. Without acorn (no runtime), the cell runs as
// written, and a top-level `await` is retried inside an async function (its declarations stay
// local to that cell).
function prepare(src) {
  if (!acorn) {
    try {
      new vm.Script(src, { filename: CELL });
      return { code: src, async: false };
    } catch (e) {
      if (e instanceof SyntaxError && /await/.test(e.message)) {
        return { code: '(async () => {' + src + '\n})()', async: true };
      }
      return { code: src, async: false };
    }
  }
  let ast;
  let isAsync = false;
  try {
    ast = parse(src, false);
  } catch (e) {
    try {
      ast = parse(src, true);
      isAsync = true;
    } catch (e2) {
      return { code: src, async: false }; // V8 reports the syntax error
    }
  }
  const edits = [];
  const seg = (n) => src.slice(n.start, n.end);
  if (!isAsync) {
    for (const node of ast.body) {
      if (node.type === 'VariableDeclaration' && node.kind !== 'var') {
        edits.push({ start: node.start, end: node.start + node.kind.length, text: 'var' });
      } else if (node.type === 'ClassDeclaration') {
        edits.push({ start: node.start, end: node.end, text: 'var ' + node.id.name + ' = ' + seg(node) + ';' });
      }
    }
    return { code: applyEdits(src, edits), async: false };
  }
  const hoisted = [];
  ast.body.forEach((node, i) => {
    const last = i === ast.body.length - 1;
    if (node.type === 'VariableDeclaration') {
      const assigns = [];
      for (const d of node.declarations) {
        patternNames(d.id, hoisted);
        if (d.init) assigns.push(seg(d.id) + ' = ' + seg(d.init));
        else if (node.kind !== 'var') assigns.push(seg(d.id) + ' = undefined');
      }
      edits.push({ start: node.start, end: node.end, text: assigns.length ? 'void (' + assigns.join(', ') + ');' : ';' });
    } else if (node.type === 'FunctionDeclaration' || node.type === 'ClassDeclaration') {
      hoisted.push(node.id.name);
      edits.push({ start: node.start, end: node.end, text: node.id.name + ' = ' + seg(node) + ';' });
    } else if (last && node.type === 'ExpressionStatement') {
      edits.push({ start: node.start, end: node.end, text: 'return (' + seg(node.expression) + ');' });
    }
  });
  const names = [...new Set(hoisted)];
  const head = (names.length ? 'var ' + names.join(', ') + '; ' : '') + '(async () => { ';
  return { code: head + applyEdits(src, edits) + '\n})()', async: true };
}

const dynamicImport =
  vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER ? vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER : undefined;

class CellTimeout extends Error {}

function withTimeout(promise, ms) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CellTimeout('timed out')), Math.max(1, ms));
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

async function opExec(req) {
  const limit = req.max_output == null ? DEFAULT_MAX_OUTPUT : Math.max(0, Number(req.max_output) | 0);
  const timeoutMs = Math.max(1, Number(req.timeout_ms) || DEFAULT_TIMEOUT_MS);
  const src = typeof req.code === 'string' ? req.code : '';
  OUT.start(4 * limit);
  ERR.start(4 * limit);
  const t0 = Date.now();
  let ok = true;
  let value;
  let timedOut = false;
  let errorName = null;
  let errorMessage = null;
  let interrupted = false;
  try {
    const cell = prepare(src);
    const opts = { filename: CELL };
    if (dynamicImport) opts.importModuleDynamically = dynamicImport;
    const script = new vm.Script(cell.code, opts);
    value = script.runInThisContext({ timeout: timeoutMs, displayErrors: true, breakOnSigint: true });
    if (cell.async) value = await withTimeout(value, timeoutMs - (Date.now() - t0));
  } catch (e) {
    ok = false;
    if (e && e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') {
      // The supervisor's SIGINT (it gave up waiting): the cell stopped, the session goes on.
      interrupted = true;
      ERR.write('Interrupted\n');
    } else if (e instanceof CellTimeout || (e && e.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT')) {
      timedOut = true;
      errorName = 'ExecutionTimeout';
      errorMessage = 'the cell ran longer than ' + timeoutMs / 1000 + ' s and was stopped';
    } else {
      errorName = e && typeof e.name === 'string' ? e.name : 'Error';
      errorMessage = e && typeof e.message === 'string' ? e.message : util.inspect(e);
      ERR.write(stackOf(e) + '\n');
    }
  }
  // Callbacks already due (a resolved promise's then, a 0 ms timer) still write into this cell.
  await new Promise((r) => setImmediate(r));
  let result = null;
  if (ok && value !== undefined) {
    try {
      result = fit(util.inspect(value, { depth: 4, maxArrayLength: 200, breakLength: 80 }), MAX_RESULT);
    } catch (e) {
      result = fit(String(e), MAX_RESULT);
    }
  }
  return {
    status: ok ? 'Succeeded' : 'Failed',
    stdout: fit(OUT.take(), limit),
    stderr: fit(ERR.take(), limit),
    result,
    images: [],
    duration_ms: Date.now() - t0,
    interrupted,
    timed_out: timedOut,
    error_name: errorName,
    error_message: errorMessage == null ? null : fit(errorMessage, 4096),
  };
}

// --- files ---------------------------------------------------------------------------------
class FileError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

const inside = (p) => p === DATA || p.startsWith(DATA + '/');

// realpath that, like Python's, resolves as far as the path exists.
function realpathLenient(p) {
  const rest = [];
  let cur = p;
  for (;;) {
    try {
      return path.join(fs.realpathSync(cur), ...rest.reverse());
    } catch (e) {
      if (e.code !== 'ENOENT' && e.code !== 'ENOTDIR') throw e;
      rest.push(path.basename(cur));
      const up = path.dirname(cur);
      if (up === cur) return p;
      cur = up;
    }
  }
}

function resolve(name, follow = true, allowRoot = false) {
  if (typeof name !== 'string' || name.includes('\0')) throw new FileError('Invalid', 'invalid path');
  let p = path.normalize(name.startsWith('/') ? name : path.join(DATA, name));
  if (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1);
  if (!inside(p)) throw new FileError('Invalid', `'${name}' is outside ${DATA}`);
  if (p === DATA) {
    if (!allowRoot) throw new FileError('Invalid', `'${name}' names the data directory itself`);
    return DATA;
  }
  const parent = realpathLenient(path.dirname(p));
  if (!inside(parent)) throw new FileError('Invalid', `'${name}' resolves outside ${DATA}`);
  let full = path.join(parent, path.basename(p));
  if (follow) {
    full = realpathLenient(full);
    if (!inside(full)) throw new FileError('Invalid', `'${name}' resolves outside ${DATA}`);
    if (full === DATA && !allowRoot) throw new FileError('Invalid', `'${name}' names the data directory itself`);
  }
  return full;
}

function entry(p) {
  const st = fs.lstatSync(p);
  const isDir = st.isDirectory();
  return { name: path.basename(p) || p, path: p, is_dir: isDir, size: isDir ? 0 : st.size, modified: st.mtimeMs / 1000 };
}

let upload = null;

function abortUpload() {
  if (upload) {
    try {
      fs.closeSync(upload.fd);
    } catch (e) {}
    try {
      fs.unlinkSync(upload.tmp);
    } catch (e) {}
    upload = null;
  }
}

function opWrite(req) {
  if (req.first) {
    abortUpload();
    const p = resolve(req.path);
    if (fs.existsSync(p) && fs.statSync(p).isDirectory()) throw new FileError('Invalid', `${p} is a directory`);
    const size = Number(req.size) || 0;
    const parent = path.dirname(p);
    fs.mkdirSync(parent, { recursive: true });
    const st = fs.statfsSync(DATA);
    let free = st.bavail * st.bsize;
    try {
      free += fs.statSync(p).size;
    } catch (e) {}
    if (size > free) {
      throw new FileError('TooLarge', `${size} bytes do not fit: ${free} bytes free of ${st.blocks * st.bsize} in ${DATA}`);
    }
    const tmp = path.join(parent, UPLOAD_PREFIX + process.pid);
    const c = fs.constants;
    const fd = fs.openSync(tmp, c.O_WRONLY | c.O_CREAT | c.O_TRUNC | c.O_NOFOLLOW, 0o644);
    upload = { fd, tmp, path: p };
  } else if (!upload) {
    throw new FileError('Invalid', 'no upload in progress');
  }
  try {
    const data = Buffer.from(req.data || '', 'base64');
    let off = 0;
    while (off < data.length) off += fs.writeSync(upload.fd, data, off, data.length - off);
    if (req.last) {
      fs.closeSync(upload.fd);
      fs.renameSync(upload.tmp, upload.path);
      const p = upload.path;
      upload = null;
      return { entry: entry(p) };
    }
    return {};
  } catch (e) {
    abortUpload();
    throw e;
  }
}

function opRead(req) {
  const p = resolve(req.path);
  const c = fs.constants;
  const fd = fs.openSync(p, c.O_RDONLY | c.O_NOFOLLOW);
  try {
    const st = fs.fstatSync(fd);
    if (st.isDirectory()) throw new FileError('Invalid', `${p} is a directory`);
    const offset = Number(req.offset) || 0;
    const length = Number(req.length) || 1 << 20;
    const buf = Buffer.alloc(Math.min(length, Math.max(0, st.size - offset)));
    let n = 0;
    while (n < buf.length) {
      const r = fs.readSync(fd, buf, n, buf.length - n, offset + n);
      if (r === 0) break;
      n += r;
    }
    return { data: buf.subarray(0, n).toString('base64'), size: st.size, eof: n < length || offset + n >= st.size };
  } finally {
    fs.closeSync(fd);
  }
}

class Listing {
  constructor() {
    this.entries = [];
    this.size = 0;
    this.truncated = false;
  }
  add(e) {
    const n = Buffer.byteLength(JSON.stringify(e)) + 2;
    if (this.truncated || this.size + n > MAX_LIST_BYTES) {
      this.truncated = true;
      return;
    }
    this.size += n;
    this.entries.push(e);
  }
}

const byName = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

function listDir(dir, recursive, out) {
  const items = fs.readdirSync(dir, { withFileTypes: true }).filter((d) => !d.name.startsWith(UPLOAD_PREFIX));
  const isDir = (d) => d.isDirectory() || (d.isSymbolicLink() && (() => {
    try {
      return fs.statSync(path.join(dir, d.name)).isDirectory();
    } catch (e) {
      return false;
    }
  })());
  const dirs = items.filter(isDir).map((d) => d.name).sort(byName);
  const files = items.filter((d) => !isDir(d)).map((d) => d.name).sort(byName);
  for (const n of recursive ? dirs.concat(files) : items.map((d) => d.name).sort(byName)) {
    try {
      out.add(entry(path.join(dir, n)));
    } catch (e) {
      if (e.code !== 'ENOENT') throw e;
    }
  }
  if (recursive) {
    for (const d of dirs) {
      const sub = path.join(dir, d);
      try {
        if (fs.lstatSync(sub).isDirectory()) listDir(sub, true, out);
      } catch (e) {
        if (e.code !== 'ENOENT') throw e;
      }
    }
  }
}

function opList(req) {
  const base = resolve(req.path || DATA, true, true);
  let st;
  try {
    st = fs.statSync(base);
  } catch (e) {
    throw new FileError('NotFound', `${base} does not exist`);
  }
  if (!st.isDirectory()) throw new FileError('Invalid', `${base} is not a directory`);
  const out = new Listing();
  listDir(base, !!req.recursive, out);
  return { entries: out.entries, truncated: out.truncated };
}

function opStat(req) {
  return { entry: entry(resolve(req.path, false, true)) };
}

function opDelete(req) {
  const p = resolve(req.path, false);
  const st = fs.lstatSync(p);
  if (st.isDirectory()) fs.rmSync(p, { recursive: true, force: true });
  else fs.unlinkSync(p);
  return {};
}

const OPS = {
  exec: opExec,
  write: opWrite,
  read: opRead,
  list: opList,
  stat: opStat,
  delete: opDelete,
  ping: () => ({ pong: true }),
};

function fileError(e) {
  if (e instanceof FileError) return { kind: e.kind, message: e.message };
  const code = e && e.code;
  if (code === 'ENOENT') return { kind: 'NotFound', message: `${e.path || 'file'} does not exist` };
  if (code === 'EISDIR' || code === 'ENOTDIR' || code === 'ELOOP' || code === 'ENAMETOOLONG') {
    return { kind: 'Invalid', message: String(e.message) };
  }
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') return { kind: 'TooLarge', message: `${DATA} is full: ${e.message}` };
  return { kind: 'Other', message: `${(e && e.name) || 'Error'}: ${(e && e.message) || e}` };
}

// --- identity forwarder (as agent.py's): 127.0.0.1:IDENTITY_PORT -> the host's socket --------
const IDENTITY_PORT = 42356;
const identitySocket = process.env.CLOISTER_IDENTITY_SOCKET || '';
delete process.env.CLOISTER_IDENTITY_SOCKET;
if (identitySocket) {
  const server = net.createServer((conn) => {
    const up = net.connect(identitySocket);
    conn.pipe(up);
    up.pipe(conn);
    const close = () => {
      conn.destroy();
      up.destroy();
    };
    conn.on('error', close);
    up.on('error', close);
  });
  server.on('error', () => {});
  server.listen(IDENTITY_PORT, '127.0.0.1');
}

// --- main loop -----------------------------------------------------------------------------
const sock = new net.Socket({ fd: PROTO_FD, readable: true, writable: true });
const decoder = new StringDecoder('utf8');
let pending = '';
const queue = [];
let busy = false;

function send(obj) {
  sock.write(JSON.stringify(obj) + '\n');
}

async function pump() {
  if (busy) return;
  busy = true;
  while (queue.length) {
    const line = queue.shift();
    let rid = null;
    let resp;
    try {
      const req = JSON.parse(line);
      rid = req.id === undefined ? null : req.id;
      const op = req.op || 'exec';
      if (op !== 'write') abortUpload();
      const fn = OPS[op];
      if (!fn) throw new FileError('Invalid', `unknown op ${String(op).slice(0, 64)}`);
      resp = await fn(req);
    } catch (e) {
      resp = { error: fileError(e) };
      resp.error.message = fit(String(resp.error.message), 4096);
    }
    resp.id = rid;
    send(resp);
  }
  busy = false;
}

sock.on('data', (chunk) => {
  pending += decoder.write(chunk);
  let i;
  while ((i = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, i);
    pending = pending.slice(i + 1);
    if (line.trim()) queue.push(line);
  }
  pump();
});
sock.on('end', () => process.exit(0));
sock.on('error', () => process.exit(1));

send({ ready: true, pid: process.pid, flavour: 'node', node: process.version.replace(/^v/, '') });
