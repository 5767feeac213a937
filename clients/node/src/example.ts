// Example: classify chest X-ray files and print the findings over threshold.
//   npm run build && node dist/src/example.js [--server http://127.0.0.1:5051] chest1.png chest2.jpg
import { basename } from "node:path";
import { ConnectError, XRayClient } from "./index.js";

async function main(argv: string[]): Promise<number> {
  let server = process.env.XRAY_SERVER ?? "http://127.0.0.1:5051";
  const files: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--server") server = argv[++i];
    else files.push(argv[i]);
  }
  if (files.length === 0) {
    console.error("usage: example.js [--server http://host:port] FILE.png...");
    return 2;
  }
  const client = new XRayClient(server.split(","), { timeoutMs: 30_000 });
  try {
    const model = await client.getModelInfo();
    const response = await client.classifyFiles(files);
    response.predictions.forEach((prediction, i) => {
      const findings = prediction.findings.map((f) => `${f.name} ${f.probability.toFixed(3)}`);
      console.log(`${basename(files[i])}: ${findings.length ? findings.join(", ") : "none above threshold"}`);
    });
    console.log(`model ${model.name} ${model.version} (${model.architecture})`);
    return 0;
  } catch (error) {
    const e = ConnectError.from(error);
    console.error(`error: ${e.code === 14 ? `cannot reach an XRay server at ${server}` : "the server answered"}: ${e.rawMessage}`);
    return e.code === 14 ? 3 : 4;
  }
}

process.exitCode = await main(process.argv.slice(2));
