// The OpenID Provider of burrow's sign-in tests: the certified `oidc-provider`
// package (pinned in package.json / package-lock.json next to this file) with
// test users, a plain HTML login form, no consent page for the configured
// (first-party) clients, and a control API for fault injection.
//
// Run by tests/common/oidc.rs, which installs the packages with `npm ci` into a
// temporary directory and starts `node provider.mjs` there. By hand:
//
//   npm ci --prefix /tmp/op && cp provider.mjs /tmp/op/ && \
//     node /tmp/op/provider.mjs --port 0 --clients '[{"client_id":"burrow",
//       "client_secret":"s3cret","redirect_uris":["https://login.localhost:8443/callback"]}]'
//
// Options (each also as an environment variable, given in brackets):
//   --port N        [OIDC_PORT]      listen on 127.0.0.1:N (0: a free port; default 0)
//   --host NAME     [OIDC_HOST]      host name in the issuer URL (default 127.0.0.1;
//                                    the server always listens on 127.0.0.1 only)
//   --clients JSON  [OIDC_CLIENTS]   array of client metadata, or @FILE to read it from
//                                    a file: client_id, client_secret, redirect_uris,
//                                    optionally post_logout_redirect_uris and
//                                    token_endpoint_auth_method. Secrets may go as
//                                    client_secret_basic or client_secret_post either
//                                    way: oidc-provider accepts both for a client
//                                    registered with either of them.
//   --users JSON    [OIDC_USERS]     extra or replaced test users, or @FILE: an array of
//                                    {username, password?, email?, email_verified?,
//                                    name?, groups?} (password defaults to the username)
//   --tls-cert FILE [OIDC_TLS_CERT]  serve https with this certificate chain (PEM) ...
//   --tls-key FILE  [OIDC_TLS_KEY]   ... and this private key (PEM)
//
// Once listening it prints one line on stdout:
//
//   oidc ready: ISSUER
//
// e.g. `oidc ready: http://127.0.0.1:40123`. It exits on SIGTERM or SIGINT and
// when its standard input reaches end of file (so a test run that dies never
// leaves it behind: the harness holds the other end of a pipe). Set
// OIDC_IGNORE_STDIN=1 to run it with stdin closed.
//
// Test users (password = username): alice (alice@example.com, verified,
// "Alice Example", groups [eng]), bob (bob@example.org, verified, [ops]),
// carol (carol@example.com, NOT verified, [eng]), dave (dave@other.test,
// verified, no groups).
//
// Scopes: openid, email (email, email_verified), profile (name,
// preferred_username), groups (groups). Scope-requested claims go into the ID
// token itself (conformIdTokenClaims: false), not only into userinfo. Only
// the authorization code flow with PKCE S256 is allowed.
//
// Login form (GET /interaction/UID): <form id="login-form"> with inputs
// name/id "username" and "password" and <button id="sign-in">; a second form
// with <button id="cancel"> ends the interaction with access_denied. A failed
// sign-in shows the form again with <p id="login-error">. Sessions are real
// (cookies, kept in memory): a second authorization request signs in
// silently, prompt=login (or max_age) shows the form again.
//
// Control API, on the same listener under /__control/ (no route of
// oidc-provider starts so), JSON in and out:
//
//   GET    /__control/state  issuer, mode, remaining count, published and signing kids
//   POST   /__control/mode   {"mode": M, "count": N, "delay_ms": D, "endpoints": [...]}
//                            sets the fault mode (replacing the previous one) for the
//                            next N affected responses (count omitted or null: until
//                            reset). Modes:
//       normal        no fault
//       wrong-aud     ID token re-signed with aud "burrow-fixture-wrong-audience"
//       wrong-iss     ID token re-signed with iss ISSUER/wrong-issuer
//       wrong-nonce   ID token re-signed with another nonce
//       expired       ID token re-signed with iat 2 h ago, exp 1 h ago
//       future-iat    ID token re-signed with iat 1 h ahead (exp 2 h ahead)
//       alg-none      ID token made unsigned: header {"alg":"none"}, empty signature
//       bad-signature ID token signed by a key not in the JWKS, under the kid of the
//                     provider's signing key (so the signature does not verify)
//       unknown-kid   ID token signed by a new key with a new kid, which the JWKS
//                     publishes from this response on (a key rotation the relying
//                     party only learns of by fetching the JWKS again: it must
//                     accept the token)
//       slow          discovery, token and JWKS responses (or those of "endpoints":
//                     any of discovery, jwks, token, authorization, userinfo) are
//                     delayed by delay_ms (default 2000)
//       down          those endpoints answer 503
//       rotate        not a mode: rotates the signing keys now (as /__control/rotate)
//                     and leaves the mode as it was
//     The ID token modes affect successful token endpoint responses only; the
//     ID token keeps every other claim (and the access token is unchanged).
//   POST   /__control/reset  back to mode normal (the log and rotated keys stay)
//   POST   /__control/clients {"clients": [...]} replaces the registered clients
//                            (same form as --clients), e.g. once the relying party's
//                            port, and so its redirect URI, is known; sessions stay.
//                            A client oidc-provider rejects (say, a redirect URI with
//                            a fragment) gets a 400 and changes nothing.
//   POST   /__control/rotate {"keep_old": true} a real key rotation: a new key signs
//                            every ID token from now on and the JWKS lists it first;
//                            the old key stays published unless keep_old is false.
//                            Answers {"kid": NEW, "kids": [PUBLISHED...]}.
//   GET    /__control/log    {"events": [...]} what happened, oldest first: one event
//                            per request to discovery, jwks, authorization, token,
//                            userinfo and end_session, and per login attempt, each with
//                            seq, at (ms since the epoch), kind, method, path, status,
//                            fault (the mode applied, or null). Token events also have
//                            grant_type, client_id, client_auth (client_secret_basic,
//                            client_secret_post or none), code_verifier (true when the
//                            request carried one), redirect_uri, id_token_kid and
//                            error; authorization events client_id, response_type,
//                            scope, redirect_uri, code_challenge_method,
//                            code_challenge (bool), nonce (bool), state (bool) and
//                            prompt; login events username and ok.
//   DELETE /__control/log    clears the log
//
// Why oidc-provider 8.8.1, the last 8.x: 8.x supports every Node.js LTS from
// 18 on, so it runs on Debian 12's own nodejs (18.20) as well as on the
// NodeSource nodejs 20 of the development machines. 9.0.0 removed support for
// Node.js 18 and 20 (it prints "Unsupported runtime. Use Node.js v22.x LTS"
// on them).

import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import { CompactSign, exportJWK, generateKeyPair } from 'jose';

const ALG = 'RS256';

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

const { values: argv } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    clients: { type: 'string' },
    users: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
  },
});

function option(name, env, fallback) {
  return argv[name] ?? process.env[env] ?? fallback;
}

function jsonOption(name, env, fallback) {
  const raw = option(name, env, undefined);
  if (raw === undefined || raw === '') return fallback;
  const text = raw.startsWith('@') ? readFileSync(raw.slice(1), 'utf8') : raw;
  try {
    return JSON.parse(text);
  } catch (err) {
    fail(`--${name}: not JSON: ${err.message}`);
  }
}

function fail(message) {
  process.stderr.write(`oidc provider: ${message}\n`);
  process.exit(2);
}

const port = Number(option('port', 'OIDC_PORT', '0'));
if (!Number.isInteger(port) || port < 0 || port > 65535) fail('--port must be 0..65535');
const tlsCert = option('tls-cert', 'OIDC_TLS_CERT', '');
const tlsKey = option('tls-key', 'OIDC_TLS_KEY', '');
if (Boolean(tlsCert) !== Boolean(tlsKey)) fail('--tls-cert and --tls-key go together');
const scheme = tlsCert ? 'https' : 'http';
const issuerHost = option('host', 'OIDC_HOST', '127.0.0.1');

// Client metadata as oidc-provider takes it; throws on a malformed list.
function normalizeClients(list) {
  if (!Array.isArray(list)) throw new Error('clients must be a JSON array');
  return list.map((c) => {
    if (!c || !c.client_id || !c.client_secret || !Array.isArray(c.redirect_uris)) {
      throw new Error(`client needs client_id, client_secret and redirect_uris: ${JSON.stringify(c)}`);
    }
    return {
      token_endpoint_auth_method: 'client_secret_basic',
      ...c,
      grant_types: ['authorization_code'],
      response_types: ['code'],
    };
  });
}

let clientMetadata;
try {
  clientMetadata = normalizeClients(jsonOption('clients', 'OIDC_CLIENTS', []));
} catch (err) {
  fail(`--clients: ${err.message}`);
}

const users = new Map();
function addUser(u) {
  if (!u.username) fail(`user without a username: ${JSON.stringify(u)}`);
  users.set(u.username, {
    password: u.username,
    email_verified: true,
    groups: [],
    ...u,
  });
}
[
  { username: 'alice', email: 'alice@example.com', name: 'Alice Example', groups: ['eng'] },
  { username: 'bob', email: 'bob@example.org', name: 'Bob Example', groups: ['ops'] },
  {
    username: 'carol',
    email: 'carol@example.com',
    email_verified: false,
    name: 'Carol Example',
    groups: ['eng'],
  },
  { username: 'dave', email: 'dave@other.test', name: 'Dave Other', groups: [] },
].forEach(addUser);
const extraUsers = jsonOption('users', 'OIDC_USERS', []);
if (!Array.isArray(extraUsers)) fail('--users must be a JSON array');
extraUsers.forEach(addUser);

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

async function newKey() {
  const { privateKey } = await generateKeyPair(ALG, { extractable: true });
  const jwk = await exportJWK(privateKey);
  const kid = `k-${randomBytes(6).toString('hex')}`;
  return { kid, jwk: { ...jwk, kid, alg: ALG, use: 'sig' }, key: privateKey };
}

// The provider's keys: keys[0] signs, all of them are published. The first
// one is generated (on libuv's thread pool) while oidc-provider loads, which
// takes most of the start-up time.
const firstKey = newKey();
const { default: Provider } = await import('oidc-provider');
let keys = [await firstKey];

// ---------------------------------------------------------------------------
// Storage shared by every Provider instance (a key rotation builds a new one)
// ---------------------------------------------------------------------------

const store = new Map(); // `${model}:${id}` -> { payload, expiresAt }
// What revokeByGrantId ends: the tokens of a grant (not the interactions or
// sessions that also carry a grantId).
const GRANT_TOKENS = new Set([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest',
]);
const sessionsByUid = new Map(); // session uid -> session id
const tokensByGrant = new Map(); // grant id -> Set of store keys

function live(entry) {
  return entry && (entry.expiresAt === undefined || entry.expiresAt > Date.now());
}

class Storage {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : undefined;
    store.set(key, { payload, expiresAt });
    if (this.model === 'Session' && payload.uid) sessionsByUid.set(payload.uid, id);
    if (payload.grantId && GRANT_TOKENS.has(this.model)) {
      if (!tokensByGrant.has(payload.grantId)) tokensByGrant.set(payload.grantId, new Set());
      tokensByGrant.get(payload.grantId).add(key);
    }
  }

  async find(id) {
    const entry = store.get(this.key(id));
    return live(entry) ? entry.payload : undefined;
  }

  async findByUid(uid) {
    const id = sessionsByUid.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode() {
    return undefined; // no device flow here
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of tokensByGrant.get(grantId) ?? []) store.delete(key);
    tokensByGrant.delete(grantId);
  }
}

// ---------------------------------------------------------------------------
// Faults and the event log
// ---------------------------------------------------------------------------

const TOKEN_MODES = new Set([
  'wrong-aud', 'wrong-iss', 'wrong-nonce', 'expired', 'future-iat', 'alg-none',
  'bad-signature', 'unknown-kid',
]);
const ENDPOINT_MODES = new Set(['slow', 'down']);
const ENDPOINTS = ['discovery', 'jwks', 'token', 'authorization', 'userinfo'];

let fault = { mode: 'normal' };
// { mode, remaining (null: until reset), delayMs, endpoints: Set }

const events = [];
let seq = 0;

function record(event) {
  seq += 1;
  const full = { seq, at: Date.now(), fault: null, ...event };
  events.push(full);
  return full;
}

// Takes one use of the current mode if it applies to `kind` (an endpoint;
// the ID token modes apply to "token-response"): returns that fault
// ({ mode, delayMs }) or null.
function takeFault(kind) {
  const taken = fault;
  const applies = kind === 'token-response'
    ? TOKEN_MODES.has(taken.mode)
    : ENDPOINT_MODES.has(taken.mode) && taken.endpoints.has(kind);
  if (!applies) return null;
  if (taken.remaining !== null) {
    taken.remaining -= 1;
    if (taken.remaining <= 0) fault = { mode: 'normal' };
  }
  return { mode: taken.mode, delayMs: taken.delayMs };
}

function endpointOf(path) {
  if (path === '/.well-known/openid-configuration') return 'discovery';
  if (path === '/jwks') return 'jwks';
  if (path === '/token') return 'token';
  if (path === '/auth' || path.startsWith('/auth/')) return 'authorization';
  if (path === '/me') return 'userinfo';
  if (path === '/session/end' || path.startsWith('/session/end/')) return 'end_session';
  return null;
}

// ---------------------------------------------------------------------------
// Re-signing ID tokens
// ---------------------------------------------------------------------------

function b64json(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

async function sign(header, payload, key) {
  return new CompactSign(Buffer.from(JSON.stringify(payload)))
    .setProtectedHeader(header)
    .sign(key);
}

async function rewriteIdToken(idToken, mode) {
  const [h, p] = idToken.split('.');
  const header = b64json(h);
  const payload = b64json(p);
  const now = Math.floor(Date.now() / 1000);
  const signer = keys[0];
  switch (mode) {
    case 'wrong-aud':
      return sign(header, { ...payload, aud: 'burrow-fixture-wrong-audience' }, signer.key);
    case 'wrong-iss':
      return sign(header, { ...payload, iss: `${issuer}/wrong-issuer` }, signer.key);
    case 'wrong-nonce':
      return sign(header, { ...payload, nonce: `wrong-${randomBytes(8).toString('hex')}` }, signer.key);
    case 'expired':
      return sign(header, { ...payload, iat: now - 7200, exp: now - 3600 }, signer.key);
    case 'future-iat':
      return sign(header, { ...payload, iat: now + 3600, exp: now + 7200 }, signer.key);
    case 'alg-none': {
      const none = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
      const body = Buffer.from(JSON.stringify(payload)).toString('base64url');
      return `${none}.${body}.`;
    }
    case 'bad-signature': {
      const stranger = await newKey();
      return sign(header, payload, stranger.key);
    }
    case 'unknown-kid': {
      const fresh = await newKey();
      // Published from now on; the provider still signs with keys[0].
      keys = [...keys, fresh];
      rebuildProvider();
      return sign({ ...header, kid: fresh.kid }, payload, fresh.key);
    }
    default:
      throw new Error(`not a token mode: ${mode}`);
  }
}

async function rotate({ keep_old: keepOld = true } = {}) {
  const fresh = await newKey();
  keys = keepOld ? [fresh, ...keys] : [fresh];
  rebuildProvider();
  return { kid: fresh.kid, kids: keys.map((k) => k.kid) };
}

// ---------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------

const cookieKeys = [randomBytes(32).toString('hex')];
let issuer; // set once listening
let provider;
let handler;

function configuration() {
  return {
    adapter: Storage,
    clients: clientMetadata,
    jwks: { keys: keys.map((k) => k.jwk) },
    async findAccount(ctx, id) {
      const user = users.get(id);
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          const claims = { sub: id, preferred_username: id, groups: user.groups };
          for (const name of ['email', 'email_verified', 'name']) {
            if (user[name] !== undefined) claims[name] = user[name];
          }
          return claims;
        },
      };
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    // Scope-requested claims in the ID token too, not only from userinfo.
    conformIdTokenClaims: false,
    responseTypes: ['code'],
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 120,
      IdToken: 3600,
      Interaction: 3600,
      Grant: 86400,
      Session: 86400,
    },
    pkce: { methods: ['S256'], required: () => true },
    // Every configured client is first party: no consent page. A grant for
    // the scopes asked for is made (or extended) as the user signs in.
    async loadExistingGrant(ctx) {
      const { oidc } = ctx;
      const accountId = oidc.account?.accountId ?? oidc.session.accountId;
      const clientId = oidc.client.clientId;
      let grant;
      const grantId = oidc.result?.consent?.grantId ?? oidc.session.grantIdFor(clientId);
      if (grantId) grant = await oidc.provider.Grant.find(grantId);
      if (!grant || grant.accountId !== accountId || grant.clientId !== clientId) {
        grant = new oidc.provider.Grant({ accountId, clientId });
      }
      grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
      await grant.save();
      return grant;
    },
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: true },
      rpInitiatedLogout: { enabled: true },
    },
    // Lax cookies: the issuer may be plain http on loopback, where a browser
    // drops SameSite=None cookies (they need Secure).
    cookies: {
      keys: cookieKeys,
      long: { signed: true, sameSite: 'lax' },
      short: { signed: true, sameSite: 'lax' },
    },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Sign-in error', `<h1>Sign-in error</h1>
<p id="error">${escape(out.error)}</p>
<p id="error-description">${escape(out.error_description ?? '')}</p>`);
    },
  };
}

// Logs token requests and rewrites ID tokens; runs around oidc-provider's
// own handling of every request (a Koa middleware).
async function tokenMiddleware(ctx, next) {
  await next();
  if (ctx.path !== '/token' || ctx.method !== 'POST') return;
  const params = ctx.oidc?.params ?? {};
  const basic = /^basic /i.test(ctx.get('authorization'));
  let clientAuth = 'none';
  if (basic) clientAuth = 'client_secret_basic';
  else if (params.client_secret) clientAuth = 'client_secret_post';
  const event = {
    kind: 'token',
    method: ctx.method,
    path: ctx.path,
    status: ctx.status,
    grant_type: params.grant_type ?? null,
    client_id: ctx.oidc?.client?.clientId ?? params.client_id ?? null,
    client_auth: clientAuth,
    code_verifier: typeof params.code_verifier === 'string' && params.code_verifier.length > 0,
    redirect_uri: params.redirect_uri ?? null,
    id_token_kid: null,
    fault: ctx.req.burrowFault ?? null,
    error: ctx.status === 200 ? null : (ctx.body?.error ?? `status ${ctx.status}`),
  };
  if (ctx.status === 200 && ctx.body?.id_token) {
    const taken = takeFault('token-response');
    if (taken) {
      ctx.body = { ...ctx.body, id_token: await rewriteIdToken(ctx.body.id_token, taken.mode) };
      event.fault = taken.mode;
    }
    event.id_token_kid = b64json(ctx.body.id_token.split('.')[0]).kid ?? null;
  }
  record(event);
}

// oidc-provider checks a static client's metadata when it first looks the
// client up: do that now, so a bad client fails at once.
async function checkClients() {
  for (const { client_id: id } of clientMetadata) {
    await provider.Client.find(id);
  }
}

function rebuildProvider() {
  const next = new Provider(issuer, configuration());
  next.use(tokenMiddleware);
  next.on('server_error', (ctx, err) => {
    process.stderr.write(`oidc provider: server_error on ${ctx.path}: ${err.stack}\n`);
  });
  provider = next;
  handler = next.callback();
}

// ---------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------

function escape(s) {
  return String(s)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

function page(title, body) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escape(title)}</title>
<style>
body { font-family: sans-serif; background: #eef1f5; color: #1d2330; margin: 0; }
main { max-width: 24rem; margin: 4rem auto; background: #fff; padding: 2rem;
  border-radius: 8px; box-shadow: 0 2px 12px rgba(0,0,0,.12); }
h1 { font-size: 1.4rem; margin-top: 0; }
label { display: block; margin: 1rem 0 .3rem; }
input { width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem; }
button { margin-top: 1.2rem; padding: .6rem 1.2rem; font-size: 1rem; }
#sign-in { background: #2357d9; color: #fff; border: 0; border-radius: 4px; }
#login-error, #error { color: #b00020; }
.client { color: #5a6275; }
</style></head>
<body><main>
${body}
</main></body></html>`;
}

function loginPage(uid, clientId, { error, username } = {}) {
  const err = error ? `<p id="login-error">${escape(error)}</p>\n` : '';
  return page('Sign in - burrow test OpenID Provider', `<h1>Sign in</h1>
<p class="client">to continue to <span id="client-id">${escape(clientId)}</span></p>
${err}<form id="login-form" method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
<label for="username">Username</label>
<input id="username" name="username" type="text" required value="${escape(username ?? '')}">
<label for="password">Password</label>
<input id="password" name="password" type="password" required>
<button id="sign-in" type="submit">Sign in</button>
</form>
<form id="cancel-form" method="post" action="/interaction/${escape(uid)}/abort">
<button id="cancel" type="submit">Cancel</button>
</form>`);
}

function send(res, status, type, body, headers = {}) {
  res.writeHead(status, {
    'content-type': type,
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(body),
    ...headers,
  });
  res.end(body);
}

function sendJson(res, status, value) {
  send(res, status, 'application/json', `${JSON.stringify(value)}\n`);
}

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

// ---------------------------------------------------------------------------
// Interactions (the login form)
// ---------------------------------------------------------------------------

async function interaction(req, res, url) {
  const m = /^\/interaction\/([^/]+)(?:\/(login|abort))?$/.exec(url.pathname);
  if (!m) return send(res, 404, 'text/plain', 'not found\n');
  const [, uid, action] = m;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return send(res, 400, 'text/html; charset=utf-8', page('Sign-in error', `<h1>Sign-in error</h1>
<p id="error">${escape(err.error ?? err.name)}</p>
<p id="error-description">${escape(err.error_description ?? err.message)}</p>`));
  }
  if (details.uid !== uid) return send(res, 400, 'text/plain', 'interaction mismatch\n');
  const clientId = details.params.client_id;

  if (!action && req.method === 'GET') {
    if (details.prompt.name !== 'login') {
      // Consent is granted by loadExistingGrant; any other prompt means the
      // configuration is wrong, so say so instead of hanging.
      return send(res, 500, 'text/plain', `unexpected prompt ${details.prompt.name}: ${JSON.stringify(details.prompt.reasons)}\n`);
    }
    return send(res, 200, 'text/html; charset=utf-8', loginPage(uid, clientId));
  }
  if (req.method !== 'POST') return send(res, 405, 'text/plain', 'method not allowed\n');

  const form = new URLSearchParams(await readBody(req));
  if (action === 'abort') {
    record({ kind: 'login', method: 'POST', path: url.pathname, status: 303, username: null, ok: false });
    return provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'the user cancelled the sign-in',
    }, { mergeWithLastSubmission: false });
  }
  const username = form.get('username') ?? '';
  const user = users.get(username);
  const ok = Boolean(user) && form.get('password') === user.password;
  record({ kind: 'login', method: 'POST', path: url.pathname, status: ok ? 303 : 200, username, ok });
  if (!ok) {
    return send(res, 200, 'text/html; charset=utf-8', loginPage(uid, clientId, {
      error: 'Wrong username or password.',
      username,
    }));
  }
  return provider.interactionFinished(req, res, {
    login: { accountId: username, remember: true },
  }, { mergeWithLastSubmission: false });
}

// ---------------------------------------------------------------------------
// Control API
// ---------------------------------------------------------------------------

function state() {
  return {
    issuer,
    mode: fault.mode,
    remaining: fault.remaining ?? null,
    delay_ms: fault.delayMs ?? null,
    endpoints: fault.endpoints ? [...fault.endpoints] : null,
    signing_kid: keys[0].kid,
    kids: keys.map((k) => k.kid),
  };
}

async function control(req, res, url) {
  const route = `${req.method} ${url.pathname}`;
  let body = {};
  if (req.method === 'POST') {
    const text = await readBody(req);
    if (text.trim()) {
      try {
        body = JSON.parse(text);
      } catch (err) {
        return sendJson(res, 400, { error: `body is not JSON: ${err.message}` });
      }
    }
  }
  switch (route) {
    case 'GET /__control/state':
      return sendJson(res, 200, state());
    case 'GET /__control/log':
      return sendJson(res, 200, { events });
    case 'DELETE /__control/log':
      events.length = 0;
      return sendJson(res, 200, { events });
    case 'POST /__control/reset':
      fault = { mode: 'normal' };
      return sendJson(res, 200, state());
    case 'POST /__control/rotate':
      return sendJson(res, 200, await rotate(body));
    case 'POST /__control/clients': {
      const previous = clientMetadata;
      try {
        clientMetadata = normalizeClients(body.clients);
        rebuildProvider();
        await checkClients();
      } catch (err) {
        clientMetadata = previous;
        rebuildProvider();
        return sendJson(res, 400, { error: err.error_description ?? err.message });
      }
      return sendJson(res, 200, { clients: clientMetadata.map((c) => c.client_id) });
    }
    case 'POST /__control/mode': {
      const { mode, count = null, delay_ms: delayMs = 2000, endpoints } = body;
      if (mode === 'rotate') {
        const rotated = await rotate(body);
        return sendJson(res, 200, { ...state(), ...rotated });
      }
      if (mode === 'normal') {
        fault = { mode: 'normal' };
        return sendJson(res, 200, state());
      }
      if (!TOKEN_MODES.has(mode) && !ENDPOINT_MODES.has(mode)) {
        return sendJson(res, 400, { error: `unknown mode ${JSON.stringify(mode)}` });
      }
      if (count !== null && !(Number.isInteger(count) && count > 0)) {
        return sendJson(res, 400, { error: 'count must be a positive integer or null' });
      }
      const eps = endpoints ?? ['discovery', 'jwks', 'token'];
      if (!Array.isArray(eps) || eps.some((e) => !ENDPOINTS.includes(e))) {
        return sendJson(res, 400, { error: `endpoints must be some of ${ENDPOINTS.join(', ')}` });
      }
      if (!(Number.isInteger(delayMs) && delayMs >= 0 && delayMs <= 600000)) {
        return sendJson(res, 400, { error: 'delay_ms must be 0..600000' });
      }
      fault = { mode, remaining: count, delayMs, endpoints: new Set(eps) };
      return sendJson(res, 200, state());
    }
    default:
      return sendJson(res, 404, { error: `no control route ${route}` });
  }
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

function logged(req, res, url, endpoint) {
  if (endpoint === 'token') return null; // logged by tokenMiddleware
  const event = { kind: endpoint, method: req.method, path: url.pathname, status: null };
  if (endpoint === 'authorization' && url.pathname === '/auth') {
    const q = url.searchParams;
    Object.assign(event, {
      client_id: q.get('client_id'),
      response_type: q.get('response_type'),
      scope: q.get('scope'),
      redirect_uri: q.get('redirect_uri'),
      code_challenge_method: q.get('code_challenge_method'),
      code_challenge: q.has('code_challenge'),
      nonce: q.has('nonce'),
      state: q.has('state'),
      prompt: q.get('prompt'),
    });
  }
  const entry = record(event);
  res.on('finish', () => {
    entry.status = res.statusCode;
  });
  return entry;
}

async function serve(req, res) {
  const url = new URL(req.url, issuer);
  if (url.pathname.startsWith('/__control/')) return control(req, res, url);
  if (url.pathname.startsWith('/interaction/')) return interaction(req, res, url);
  const endpoint = endpointOf(url.pathname);
  const entry = endpoint ? logged(req, res, url, endpoint) : null;
  const taken = endpoint ? takeFault(endpoint) : null;
  if (entry) entry.fault = taken?.mode ?? null;
  req.burrowFault = taken?.mode; // for the token event (tokenMiddleware)
  if (taken?.mode === 'down') {
    if (endpoint === 'token') {
      record({ kind: 'token', method: req.method, path: url.pathname, status: 503, fault: 'down' });
    }
    return sendJson(res, 503, {
      error: 'temporarily_unavailable',
      error_description: 'fault injection: down',
    });
  }
  if (taken?.mode === 'slow') {
    await new Promise((resolve) => { setTimeout(resolve, taken.delayMs); });
  }
  return handler(req, res);
}

const server = tlsCert
  ? https.createServer({ cert: readFileSync(tlsCert), key: readFileSync(tlsKey) })
  : http.createServer();
server.on('request', (req, res) => {
  serve(req, res).catch((err) => {
    process.stderr.write(`oidc provider: ${req.method} ${req.url}: ${err.stack}\n`);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error', error_description: err.message });
    else res.destroy();
  });
});

function shutdown(why) {
  process.stderr.write(`oidc provider: stopping (${why})\n`);
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (process.env.OIDC_IGNORE_STDIN !== '1') {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}

server.listen(port, '127.0.0.1', async () => {
  const actual = server.address().port;
  issuer = `${scheme}://${issuerHost}:${actual}`;
  rebuildProvider();
  try {
    await checkClients();
  } catch (err) {
    fail(`--clients: ${err.error_description ?? err.message}`);
  }
  process.stdout.write(`oidc ready: ${issuer}\n`);
});
