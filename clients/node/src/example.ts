// Example: classify chest X-ray files and print the findings over threshold.
//   npm run build && node dist/src/example.js [--server localhost:5051] chest1.png chest2.jpg
//   Secured servers: --ca ca.pem, --cert client.pem --key client.key, --token JWT or --api-key KEY
//   (or XRAY_CA, XRAY_CERT, XRAY_KEY, XRAY_TOKEN, XRAY_API_KEY).
// Exit codes as every XRay tool (README, "Exit codes"): 0 ok, 1 internal error, 2 usage, 3 file not found,
// 4 server unreachable, 5 the server refused the request, 6 credentials refused.
import { statSync } from "node:fs";
import { Code, ConnectError, XRayClient, serverUrl } from "./index.js";

const exit = { ok: 0, internal: 1, usage: 2, notFound: 3, unreachable: 4, refused: 5, credentialsRefused: 6 } as const;

const usage = `usage: example.js [--server ADDRESS] [--ca PEM] [--cert PEM --key PEM] [--token JWT | --api-key KEY] FILE...

Classifies PNG or JPEG chest X-rays with an XRay server and prints the findings over threshold.

  --server ADDRESS   host:port, http://host:port, https://host:port or dns:///host:port; several comma-separated
                     (default: $XRAY_SERVER or http://127.0.0.1:5051)
  --ca PEM           CA of the server's certificate (https servers)     (or $XRAY_CA)
  --cert PEM         client certificate, for mutual TLS                 (or $XRAY_CERT)
  --key PEM          the client certificate's key                       (or $XRAY_KEY)
  --token JWT        bearer token                                       (or $XRAY_TOKEN)
  --api-key KEY      API key                                            (or $XRAY_API_KEY)
  -h, --help         this text

Exit codes: 0 ok, 1 internal error, 2 usage, 3 file not found, 4 server unreachable, 5 the server refused the request,
6 credentials refused.`;

class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  const env = process.env;
  let server = env.XRAY_SERVER || "http://127.0.0.1:5051";
  const security: Record<string, string | undefined> = {
    caPath: env.XRAY_CA, certPath: env.XRAY_CERT, keyPath: env.XRAY_KEY, token: env.XRAY_TOKEN, apiKey: env.XRAY_API_KEY,
  };
  const flags: Record<string, string> = { "--ca": "caPath", "--cert": "certPath", "--key": "keyPath", "--token": "token", "--api-key": "apiKey" };
  const files: string[] = [];
  try {
    for (let i = 0; i < argv.length; i++) {
      const arg = argv[i];
      const value = () => {
        if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
        return argv[++i];
      };
      if (arg === "--help" || arg === "-h") {
        console.log(usage);
        return exit.ok;
      } else if (arg === "--server") server = value();
      else if (arg in flags) security[flags[arg]] = value();
      else if (arg.startsWith("-") && arg !== "-") throw new UsageError(`unknown option '${arg}'`);
      else files.push(arg);
    }
    if (files.length === 0) throw new UsageError("no files given");
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`error: ${error.message}; see 'example.js --help'`);
    return exit.usage;
  }

  let addresses: string[];
  try {
    addresses = server.split(",").map((address) => serverUrl(address));
  } catch (error) {
    console.error(`error: ${(error as Error).message}`);
    return exit.usage;
  }

  // Every file first: a typo should not cost a call, nor be blamed on the server.
  for (const file of files) {
    const kind = fileKind(file);
    if (kind !== "file") {
      console.error(`error: ${file}: ${kind === "missing" ? "no such file" : "not a file"}`);
      return exit.notFound;
    }
  }

  let client: XRayClient;
  try {
    client = new XRayClient(addresses, { timeoutMs: 30_000, maxAttempts: 1, ...security });
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    // A --ca/--cert/--key file that is not there, or an address that is not one.
    console.error(`error: ${e.message}`);
    return e.code === "ENOENT" || e.code === "EACCES" ? exit.notFound : exit.usage;
  }
  try {
    const model = await client.getModelInfo();
    const response = await client.classifyFiles(files);
    response.predictions.forEach((prediction, i) => {
      const findings = prediction.findings.map((f) => `${f.name} ${f.probability.toFixed(3)}`);
      const shown = prediction.warnings.length ? "findings withheld" : findings.length ? findings.join(", ") : "none above threshold";
      console.log(`${files[i]}: ${shown}`);
      for (const warning of prediction.warnings) console.log(`  warning: ${warning}`);
    });
    console.log(`model ${model.name} ${model.version} (${model.architecture})`);
    return exit.ok;
  } catch (error) {
    if (!(error instanceof ConnectError)) {
      const e = error as Error;
      console.error(`error: internal error (${e.name}: ${e.message.split("\n")[0]})`);
      return exit.internal;
    }
    const [code, message] = describe(error, server);
    console.error(`error: ${message}`);
    return code;
  }
}

/** The exit code and one line for a failed call. */
function describe(e: ConnectError, server: string): [number, string] {
  // An HTTP/1.1 endpoint (the metrics port) answers the HTTP/2 preface with an HTTP/1.1 response: nghttp2's protocol error.
  const cause = e.cause as NodeJS.ErrnoException | undefined;
  if (cause?.code === "ERR_HTTP2_ERROR" || /HTTP_1_1_REQUIRED/.test(e.rawMessage)) {
    return [exit.unreachable, `${server} does not speak gRPC (HTTP/2 protocol error; HTTP/1.1?): is it the metrics port? The gRPC port is the server's Kestrel:Endpoints:Grpc (default 5051)`];
  }
  switch (e.code) {
    case Code.Unavailable:
      return [exit.unreachable, `cannot reach an XRay server at ${server}: ${e.rawMessage}`];
    case Code.DeadlineExceeded:
      return [exit.unreachable, `no answer from ${server} before the deadline: ${e.rawMessage}`];
    case Code.Unauthenticated:
    case Code.PermissionDenied:
      return [exit.credentialsRefused, `the server refused the credentials (${Code[e.code]}): ${e.rawMessage}`];
    default:
      return [exit.refused, `the server refused the request (${Code[e.code]}): ${e.rawMessage}`];
  }
}

function fileKind(path: string): "file" | "missing" | "other" {
  try {
    return statSync(path).isFile() ? "file" : "other";
  } catch {
    return "missing";
  }
}

process.exitCode = await main(process.argv.slice(2));
