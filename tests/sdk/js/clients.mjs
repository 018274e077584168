// The two official JavaScript SDKs, pointed at a presenced base URL with a static token.
import { Client, HTTPMessageHandler } from "@microsoft/microsoft-graph-client";
import { GraphRequestAdapter, createGraphServiceClient } from "@microsoft/msgraph-sdk";
import "@microsoft/msgraph-sdk-users";
import { AllowedHostsValidator, BaseBearerTokenAuthenticationProvider } from "@microsoft/kiota-abstractions";

/**
 * `@microsoft/microsoft-graph-client` 3.x. Its own AuthenticationHandler attaches tokens to https
 * URLs only; over plain http this middleware sets the header instead (the https path with the
 * client's own auth provider is tested in presence.test.mjs against a TLS-enabled server).
 */
export function graphClient(baseUrl, token) {
  const bearer = {
    next: undefined,
    setNext(next) {
      this.next = next;
    },
    async execute(context) {
      const headers = context.options.headers;
      if (headers instanceof Headers) {
        headers.set("Authorization", `Bearer ${token}`);
      } else {
        context.options.headers = { ...(headers ?? {}), Authorization: `Bearer ${token}` };
      }
      return this.next.execute(context);
    },
  };
  bearer.setNext(new HTTPMessageHandler());
  return Client.initWithMiddleware({ middleware: bearer, baseUrl: `${baseUrl}/`, defaultVersion: "v1.0" });
}

/** The Kiota-based `@microsoft/msgraph-sdk` (with `@microsoft/msgraph-sdk-users`). */
export function kiotaClient(baseUrl, token, version = "v1.0") {
  const auth = new BaseBearerTokenAuthenticationProvider({
    getAuthorizationToken: async () => token,
    // An empty set allows every host: the server is on 127.0.0.1, not graph.microsoft.com.
    getAllowedHostsValidator: () => new AllowedHostsValidator(new Set()),
  });
  const adapter = new GraphRequestAdapter(auth);
  adapter.baseUrl = `${baseUrl}/${version}`;
  return { client: createGraphServiceClient(adapter), adapter };
}
