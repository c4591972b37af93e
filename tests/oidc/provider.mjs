// A real OpenID Connect provider for the browser tests (panva/oidc-provider), on 127.0.0.1 only.
//
//   PORT=4455 REDIRECT=http://127.0.0.1:8000/ AUDIENCE=urn:prefs:api node provider.mjs
//
// One public client (`prefs-page`: no secret, PKCE S256 required) whose redirect and
// post-logout URIs are REDIRECT. Access tokens are JWTs (RFC 9068) for AUDIENCE, or for another
// resource the request names (`resource=`), living ACCESS_TTL seconds. The development login
// form takes any name: the name becomes the subject. Prints "listening <issuer>" when ready.

import { generateKeyPairSync } from "node:crypto";
import Provider from "oidc-provider";

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const redirect = process.env.REDIRECT;
const audience = process.env.AUDIENCE || "urn:prefs:api";
const ttl = Number(process.env.ACCESS_TTL || 300);
const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: "jwk" }), kid: "test-1", use: "sig", alg: "RS256" };

const provider = new Provider(issuer, {
  clients: [{
    client_id: "prefs-page",
    token_endpoint_auth_method: "none",
    redirect_uris: [redirect],
    post_logout_redirect_uris: [redirect],
    grant_types: ["authorization_code"],
    response_types: ["code"],
  }],
  pkce: { required: () => true },
  jwks: { keys: [signingKey] },
  cookies: { keys: ["prefs-test-provider-cookies"] },
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: "openid",
        audience: resource,
        accessTokenFormat: "jwt",
        accessTokenTTL: ttl,
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
  // Consent is the retailer's business, not the test's: every sign-in grants what it asks.
  loadExistingGrant: async (ctx) => {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope("openid");
    for (const resource of [audience, ...[ctx.oidc.params.resource || []].flat()]) {
      grant.addResourceScope(resource, "openid");
    }
    await grant.save();
    return grant;
  },
  ttl: { AccessToken: ttl, IdToken: 3600, Session: 86400, Interaction: 600, Grant: 86400, AuthorizationCode: 60 },
});
// Its built-in pages import a web font from Google: nothing in the tests may leave the machine.
provider.use(async (ctx, next) => {
  await next();
  if (typeof ctx.body === "string" && ctx.body.includes("@import url(https://fonts.googleapis.com")) {
    ctx.body = ctx.body.replace(/@import url\(https:\/\/fonts\.googleapis\.com[^)]*\);/g, "");
  }
});
provider.listen(port, "127.0.0.1", () => console.log(`listening ${issuer}`));
