// A real OAuth 2.0 / OpenID Connect identity provider for Cloister's credential-manager
// tests: panva's oidc-provider (pinned in package.json), configured from the environment,
// plus a few test-control endpoints under /__test on the same port.
//
// Environment:
//   PORT               port on 127.0.0.1 (0 or unset: an ephemeral port); issuer http://127.0.0.1:<port>
//   IDP_REDIRECT_URIS  comma-separated redirect URIs of the authorization-code clients (exact match)
//   IDP_APP_SECRET     secret of `app` (client_secret_post) and `app-basic` (client_secret_basic)
//   IDP_SVC_SECRET     secret of `svc` (client_secret_post) and `svc-basic` (client_secret_basic)
//   IDP_AT_TTL, IDP_RT_TTL, IDP_CC_TTL   lifetimes in seconds of access, refresh and
//                      client-credentials tokens (3600, 86400, 3600)
//   IDP_STRICT_OFFLINE_ACCESS=1   keep oidc-provider's rule that offline_access (and so a
//                      refresh token) needs prompt=consent in the authorization request;
//                      by default a request with offline_access and no prompt gets
//                      prompt=consent added (as Okta/Auth0/Entra behave)
//
// Clients `app`/`app-basic`: authorization_code + refresh_token, PKCE S256 required,
// scopes openid offline_access api.read; refresh tokens are issued when offline_access is
// granted, rotate on every use, and reusing a rotated one revokes the whole grant.
// Clients `svc`/`svc-basic`: client_credentials. Access tokens are opaque.
//
// Login and consent are oidc-provider's devInteractions: GET /auth → 303 /interaction/<uid>;
// POST /interaction/<uid> `prompt=login&login=<any>&password=<any>` → 303 /auth/<uid>;
// GET that → 303 /interaction/<uid2>; POST `prompt=consent` → 303 /auth/<uid2> → 303 to the
// redirect URI with code, state and iss. Cookies (_interaction, _interaction_resume,
// _session) must be carried along.
//
// Test control (a Koa middleware ahead of the provider's router; oidc-provider has no
// route under /__test):
//   GET  /__test/stats    token-endpoint counts: {authorization_code, refresh_token,
//                         client_credentials, other, errors, injected, error_codes:{..}, log:[..]}
//   POST /__test/fail     {"status":500|429|400|401, "error":"server_error"|..., "count":N,
//                         "grant_type":optional} — the next N token requests (of that grant
//                         type) fail with that status and OAuth error body, before the
//                         provider sees them (429 carries Retry-After: 1)
//   POST /__test/reset    clears stats and pending failures
//   POST /__test/expire-refresh-tokens   destroys every stored refresh token, so the next
//                         refresh gets invalid_grant ("refresh token not found")
// On listening it prints `idp ready on <port>`.
import { generateKeyPairSync } from 'node:crypto';
import * as http from 'node:http';
import * as querystring from 'node:querystring';
import Provider from 'oidc-provider';

const env = process.env;
const num = (name, dflt) => {
  const v = Number(env[name] || dflt);
  if (!Number.isSafeInteger(v) || v <= 0) throw new Error(`${name} must be a positive whole number of seconds`);
  return v;
};
const appSecret = env.IDP_APP_SECRET || 'app-secret-app-secret-app-secret';
const svcSecret = env.IDP_SVC_SECRET || 'svc-secret-svc-secret-svc-secret';
const redirectUris = (env.IDP_REDIRECT_URIS || 'http://127.0.0.1/callback')
  .split(',').map((s) => s.trim()).filter(Boolean);
const atTtl = num('IDP_AT_TTL', 3600);
const rtTtl = num('IDP_RT_TTL', 86400);
const ccTtl = num('IDP_CC_TTL', 3600);
const strictOffline = env.IDP_STRICT_OFFLINE_ACCESS === '1';

// ---- an in-memory adapter whose refresh tokens can be enumerated ------------------------
const store = new Map(); // key "Model:id" -> { payload, expiresAt }
const nowMs = () => Date.now();
function live(key) {
  const e = store.get(key);
  if (!e) return undefined;
  if (e.expiresAt !== undefined && e.expiresAt <= nowMs()) {
    store.delete(key);
    return undefined;
  }
  return e.payload;
}
class TestAdapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? nowMs() + expiresIn * 1000 : undefined;
    store.set(this.key(id), { payload, expiresAt });
    if (this.model === 'Session' && payload.uid) store.set(`sessionUid:${payload.uid}`, { payload: id, expiresAt });
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, { payload: id, expiresAt });
  }
  async find(id) { return live(this.key(id)); }
  async findByUid(uid) { const id = live(`sessionUid:${uid}`); return id ? this.find(id) : undefined; }
  async findByUserCode(code) { const id = live(`userCode:${code}`); return id ? this.find(id) : undefined; }
  async consume(id) { const p = live(this.key(id)); if (p) p.consumed = Math.floor(nowMs() / 1000); }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId(grantId) {
    const prefix = `${this.model}:`;
    for (const [key, e] of store) {
      if (key.startsWith(prefix) && e.payload?.grantId === grantId) store.delete(key);
    }
  }
}
function destroyAllRefreshTokens() {
  let n = 0;
  for (const key of [...store.keys()]) {
    if (key.startsWith('RefreshToken:')) { store.delete(key); n += 1; }
  }
  return n;
}

// ---- test control -------------------------------------------------------------------
const GRANTS = ['authorization_code', 'refresh_token', 'client_credentials'];
let stats;
let failures;
function reset() {
  stats = { authorization_code: 0, refresh_token: 0, client_credentials: 0, other: 0, errors: 0, injected: 0, error_codes: {}, log: [] };
  failures = [];
}
reset();
const DEFAULT_ERROR = { 400: 'invalid_grant', 401: 'invalid_client', 429: 'temporarily_unavailable', 503: 'temporarily_unavailable' };

async function rawBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}
function json(ctx, status, body) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = JSON.stringify(body);
}

async function testControl(ctx, next) {
  if (ctx.path === '/__test' || ctx.path.startsWith('/__test/')) {
    const route = `${ctx.method} ${ctx.path}`;
    if (route === 'GET /__test/stats') return json(ctx, 200, stats);
    if (route === 'POST /__test/reset') { reset(); return json(ctx, 200, { ok: true }); }
    if (route === 'POST /__test/expire-refresh-tokens') {
      return json(ctx, 200, { ok: true, destroyed: destroyAllRefreshTokens() });
    }
    if (route === 'POST /__test/fail') {
      let spec;
      try { spec = JSON.parse(await rawBody(ctx.req) || '{}'); } catch { return json(ctx, 400, { error: 'bad json' }); }
      const status = Number(spec.status || 500);
      const count = spec.count === undefined ? 1 : Number(spec.count);
      if (spec.grant_type !== undefined && spec.grant_type !== null && typeof spec.grant_type !== 'string') {
        return json(ctx, 400, { error: 'grant_type must be a string' });
      }
      failures.push({
        status,
        error: spec.error || DEFAULT_ERROR[status] || 'server_error',
        error_description: spec.error_description || 'failure injected by /__test/fail',
        retry_after: spec.retry_after ?? (status === 429 || status === 503 ? 1 : undefined),
        count,
        grant_type: spec.grant_type || undefined,
      });
      return json(ctx, 200, { ok: true, pending: failures });
    }
    return json(ctx, 404, { error: 'no such test endpoint' });
  }

  if (ctx.method === 'GET' && ctx.path === '/auth' && !strictOffline) {
    // oidc-provider (following OIDC Core 11) drops offline_access unless the request also
    // says prompt=consent; Okta, Auth0 and Entra ID do not insist, so neither does this IdP
    // unless IDP_STRICT_OFFLINE_ACCESS=1.
    const q = ctx.query;
    if (typeof q.scope === 'string' && q.scope.split(' ').includes('offline_access') && q.prompt === undefined) {
      ctx.query = { ...q, prompt: 'consent' };
    }
  }

  if (!(ctx.method === 'POST' && ctx.path === '/token')) return next();

  // The token endpoint: read the form body here (oidc-provider then parses ctx.request.body).
  const body = await rawBody(ctx.req);
  ctx.request.body = body;
  const form = ctx.is('application/x-www-form-urlencoded') ? querystring.parse(body) : {};
  const grantType = typeof form.grant_type === 'string' ? form.grant_type : '';
  const basic = (ctx.get('authorization') || '').toLowerCase().startsWith('basic ');
  let clientId = typeof form.client_id === 'string' ? form.client_id : undefined;
  if (basic && !clientId) {
    try {
      const dec = Buffer.from(ctx.get('authorization').slice(6).trim(), 'base64').toString('utf8');
      clientId = decodeURIComponent(dec.slice(0, dec.indexOf(':')));
    } catch { /* leave undefined */ }
  }
  if (GRANTS.includes(grantType)) stats[grantType] += 1; else stats.other += 1;
  const entry = {
    grant_type: grantType,
    client_id: clientId,
    auth: basic ? 'client_secret_basic' : (form.client_secret !== undefined ? 'client_secret_post' : 'none'),
    scope: form.scope,
    resource: form.resource,
  };

  const rule = failures.find((f) => f.count > 0 && (!f.grant_type || f.grant_type === grantType));
  if (rule) {
    rule.count -= 1;
    failures = failures.filter((f) => f.count > 0);
    stats.injected += 1;
    if (rule.retry_after !== undefined) ctx.set('Retry-After', String(rule.retry_after));
    json(ctx, rule.status, { error: rule.error, error_description: rule.error_description });
  } else {
    await next();
  }

  entry.status = ctx.status;
  if (ctx.status >= 400) {
    stats.errors += 1;
    let error = 'unknown';
    try {
      const b = typeof ctx.body === 'string' ? JSON.parse(ctx.body) : ctx.body;
      if (b && b.error) error = b.error;
    } catch { /* non-JSON body */ }
    stats.error_codes[error] = (stats.error_codes[error] || 0) + 1;
    entry.error = error;
  }
  stats.log.push(entry);
  if (stats.log.length > 200) stats.log.shift();
  return undefined;
}

// ---- the provider ---------------------------------------------------------------------
const server = http.createServer();
server.listen(Number(env.PORT || 0), '127.0.0.1', () => {
  const { port } = server.address();
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'RS256', use: 'sig', kid: 'idp' };

  const codeClient = (clientId, method) => ({
    client_id: clientId,
    client_secret: appSecret,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: method,
    scope: 'openid offline_access api.read',
  });
  const ccClient = (clientId, method) => ({
    client_id: clientId,
    client_secret: svcSecret,
    redirect_uris: [],
    response_types: [],
    grant_types: ['client_credentials'],
    token_endpoint_auth_method: method,
    scope: 'api.read',
  });

  const provider = new Provider(`http://127.0.0.1:${port}`, {
    adapter: TestAdapter,
    clients: [
      codeClient('app', 'client_secret_post'),
      codeClient('app-basic', 'client_secret_basic'),
      ccClient('svc', 'client_secret_post'),
      ccClient('svc-basic', 'client_secret_basic'),
    ],
    jwks: { keys: [jwk] },
    cookies: { keys: ['cloister-compat-idp-cookie-key'] },
    scopes: ['openid', 'offline_access', 'api.read'],
    pkce: { required: () => true },
    rotateRefreshToken: true,
    issueRefreshToken: async (_ctx, client, source) => client.grantTypeAllowed('refresh_token')
      && source.scopes.has('offline_access'),
    ttl: {
      AccessToken: atTtl,
      AuthorizationCode: 60,
      ClientCredentials: ccTtl,
      IdToken: 3600,
      RefreshToken: rtTtl,
      Grant: Math.max(rtTtl, 3600) * 10,
      Interaction: 3600,
      Session: 86400,
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
    },
  });
  provider.use(testControl);
  server.on('request', provider.callback());
  console.log(`idp ready on ${port}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
