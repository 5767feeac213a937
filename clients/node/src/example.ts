// Example: classify chest X-ray files and print the findings over threshold.
//   npm run build && node dist/src/example.js [--server http://127.0.0.1:5051] chest1.png chest2.jpg
//   Secured servers: --ca ca.pem, --cert client.pem --key client.key, --token JWT or --api-key KEY
//   (or XRAY_CA, XRAY_CERT, XRAY_KEY, XRAY_TOKEN, XRAY_API_KEY).
import { basename } from "node:path";
import { ConnectError, XRayClient } from "./index.js";

async function main(argv: string[]): Promise<number> {
  let server = process.env.XRAY_SERVER ?? "http://127.0.0.1:5051";
  const env = process.env;
  const security: Record<string, string | undefined> = {
    caPath: env.XRAY_CA, certPath: env.XRAY_CERT, keyPath: env.XRAY_KEY, token: env.XRAY_TOKEN, apiKey: env.XRAY_API_KEY,
  };
  const flags: Record<string, string> = { "--ca": "caPath", "--cert": "certPath", "--key": "keyPath", "--token": "token", "--api-key": "apiKey" };
  const files: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--server") server = argv[++i];
    else if (argv[i] in flags) security[flags[argv[i]]] = argv[++i];
    else files.push(argv[i]);
  }
  if (files.length === 0) {
    console.error("usage: example.js [--server http://host:port] [--ca PEM] [--cert PEM --key PEM] [--token JWT | --api-key KEY] FILE.png...");
    return 2;
  }
  let client: XRayClient;
  try {
    client = new XRayClient(server.split(","), { timeoutMs: 30_000, ...security });
  } catch (error) {
    console.error(`error: ${(error as Error).message}`);
    return 2;
  }
  try {
    const model = await client.getModelInfo();
    const response = await client.classifyFiles(files);
    response.predictions.forEach((prediction, i) => {
      const findings = prediction.findings.map((f) => `${f.name} ${f.probability.toFixed(3)}`);
      const shown = prediction.warnings.length ? "findings withheld" : findings.length ? findings.join(", ") : "none above threshold";
      console.log(`${basename(files[i])}: ${shown}`);
      for (const warning of prediction.warnings) console.log(`  warning: ${warning}`);
    });
    console.log(`model ${model.name} ${model.version} (${model.architecture})`);
    return 0;
  } catch (error) {
    const e = ConnectError.from(error);
    const refused = e.code === 16 || e.code === 7; // UNAUTHENTICATED, PERMISSION_DENIED
    console.error(`error: ${e.code === 14 ? `cannot reach an XRay server at ${server}` : refused ? "the server refused the credentials" : "the server answered"}: ${e.rawMessage}`);
    return e.code === 14 ? 3 : refused ? 5 : 4;
  }
}

process.exitCode = await main(process.argv.slice(2));
