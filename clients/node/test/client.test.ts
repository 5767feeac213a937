// Calls a real XRay server: XRAY_SERVER=http://127.0.0.1:PORT npm test (.ci/run starts one).
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ClassifyRequestSchema, Code, ConnectError, DataType, TensorSchema, XRayClient, serverUrl } from "../src/index.js";
import { grayPng } from "./png.js";

const server = process.env.XRAY_SERVER;
if (!server) throw new Error("Set XRAY_SERVER to a running XRay server (http://127.0.0.1:PORT).");
const client = new XRayClient(server, { timeoutMs: 30_000, maxAttempts: 1 });
const side = 224;
const limits = { timeout: 60_000 };

test("getModelInfo describes the served model", limits, async () => {
  const info = await client.getModelInfo();

  assert.equal(info.classNames.length, 14);
  assert.equal(info.thresholds.length, 14);
  assert.ok(info.classNames.includes("Atelectasis"));
  assert.equal(info.preprocessing?.cropSize, side);
  assert.ok((info.batching?.maxBatchSize ?? 0) >= 1);
});

test("classifyFloat32 returns one prediction whose probabilities are the calibrated sigmoid of its logits", limits, async () => {
  // One channel: every model takes it (a 3-channel model replicates it; a gray model takes only one).
  const image = new Float32Array(side * side).map((_, i) => Math.sin(i / 1000));
  // probability = sigmoid(scale * logit + offset) per class (ModelInfo.calibration), sigmoid(logit) without one.
  const { calibration } = await client.getModelInfo();

  const response = await client.classifyFloat32(image, [1, side, side]);

  assert.equal(response.predictions.length, 1);
  const [prediction] = response.predictions;
  assert.equal(prediction.logits.length, 14);
  prediction.logits.forEach((logit, c) => {
    const z = calibration.length > 0 ? calibration[c].scale * logit + calibration[c].offset : logit;
    assert.ok(Math.abs(prediction.probabilities[c] - 1 / (1 + Math.exp(-z))) < 1e-5, `class ${c}`);
  });
  assert.ok((prediction.timing?.batchSize ?? 0) >= 1);
  assert.ok(response.modelName.length > 0);
});

test("classifyUint8 with a batch of two returns two predictions in order", limits, async () => {
  const pixels = new Uint8Array(2 * side * side).map((_, i) => (i < side * side ? 30 : 220));

  const response = await client.classifyUint8(pixels, [2, 1, side, side]);

  assert.equal(response.predictions.length, 2);
  assert.notDeepEqual(response.predictions[0].logits, response.predictions[1].logits);
});

test("classifyEncoded decodes a PNG of any size on the server", limits, async () => {
  const response = await client.classifyEncoded([grayPng(300, 260)]);

  assert.equal(response.predictions.length, 1);
  assert.equal(response.predictions[0].probabilities.length, 14);
});

test("a bad tensor is INVALID_ARGUMENT, with what is wrong, and not retried", limits, async () => {
  const retrying = new XRayClient(server, { maxAttempts: 4 });
  const bad = create(ClassifyRequestSchema, {
    input: { case: "tensor", value: create(TensorSchema, { shape: [3n, 5n, 5n], dtype: DataType.FLOAT32, data: new Uint8Array(12) }) },
  });

  await assert.rejects(retrying.classify(bad), (error: unknown) => {
    const e = ConnectError.from(error);
    assert.equal(e.code, Code.InvalidArgument);
    assert.ok(e.rawMessage.length > 0);
    return true;
  });
});

test("classifyStream answers every request, matched by request_id", limits, async () => {
  const requests = [10, 120, 240].map((value) =>
    create(ClassifyRequestSchema, {
      input: { case: "tensor", value: create(TensorSchema, { shape: [1n, BigInt(side), BigInt(side)], dtype: DataType.UINT8, data: new Uint8Array(side * side).fill(value) }) },
    }),
  );

  const ids: string[] = [];
  for await (const response of client.classifyStream(requests)) {
    assert.equal(response.error, undefined);
    assert.equal(response.predictions.length, 1);
    ids.push(response.requestId);
  }

  assert.deepEqual(ids.sort(), ["n1", "n2", "n3"]);
});

test("with an unreachable address first, round-robin plus retry still reaches the server", limits, async () => {
  const balanced = new XRayClient(["http://127.0.0.1:1", server], { maxAttempts: 2, initialBackoffMs: 10 });

  for (let i = 0; i < 4; i++) {
    const info = await balanced.getModelInfo();
    assert.equal(info.classNames.length, 14);
  }
});

test("an unreachable server is UNAVAILABLE", limits, async () => {
  const nowhere = new XRayClient("http://127.0.0.1:1", { maxAttempts: 2, initialBackoffMs: 10, timeoutMs: 5_000 });

  await assert.rejects(nowhere.getModelInfo(), (error: unknown) => ConnectError.from(error).code === Code.Unavailable);
});

test("a token and an API key travel as headers; UNAUTHENTICATED comes back as its code", limits, async () => {
  // A stand-in server that records the headers of a call and refuses it as the real one does without credentials.
  const { createServer } = await import("node:http2");
  let seen: Record<string, unknown> = {};
  const stand = createServer((request, response) => {
    seen = request.headers;
    response.writeHead(200, { "content-type": "application/grpc", "grpc-status": "16", "grpc-message": "needs credentials" });
    response.end();
  });
  // The client keeps its HTTP/2 session open; close() alone would wait for it and keep the test process alive.
  const sessions = new Set<import("node:http2").ServerHttp2Session>();
  stand.on("session", (session) => sessions.add(session));
  await new Promise<void>((resolve) => stand.listen(0, "127.0.0.1", resolve));
  const port = (stand.address() as { port: number }).port;
  try {
    const secured = new XRayClient(`http://127.0.0.1:${port}`, { maxAttempts: 1, token: "tok-123", apiKey: "key-456" });

    await assert.rejects(secured.getModelInfo(), (error) => ConnectError.from(error).code === Code.Unauthenticated);
    assert.equal(seen["authorization"], "Bearer tok-123");
    assert.equal(seen["x-api-key"], "key-456");
  } finally {
    for (const session of sessions) session.destroy();
    stand.close();
  }
});

test("a CA or client certificate with an http:// address is refused at once", () => {
  assert.throws(() => new XRayClient("http://127.0.0.1:1", { caPath: "ca.pem" }), /https:\/\//);
});

test("addresses: host:port, localhost, URLs and dns:/// are accepted; anything else is refused with the forms that work", () => {
  assert.equal(serverUrl("localhost:5051"), "http://localhost:5051");
  assert.equal(serverUrl("10.0.0.5:5051"), "http://10.0.0.5:5051");
  assert.equal(serverUrl("[::1]:5051"), "http://[::1]:5051");
  assert.equal(serverUrl("http://127.0.0.1:5051"), "http://127.0.0.1:5051");
  assert.equal(serverUrl("https://xray.example:8443/"), "https://xray.example:8443");
  assert.equal(serverUrl("dns:///xray-headless.default.svc:5051"), "http://xray-headless.default.svc:5051");
  for (const bad of ["localhost", "localhost:http", "ftp://host:21", "http://host:5051/path", "", "a:b:c"]) {
    assert.throws(() => serverUrl(bad), /is not a server address: .*; use host:port, http:\/\/host:port/, bad);
  }
});
