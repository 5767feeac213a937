// The server's Open Inference Protocol (KServe v2 gRPC) API, called as existing KServe/Triton Node callers do: with
// @grpc/grpc-js and the protocol's .proto loaded at run time. XRAY_SERVER=http://127.0.0.1:PORT npm test.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { XRayClient } from "../src/index.js";

const server = process.env.XRAY_SERVER;
if (!server) throw new Error("Set XRAY_SERVER to a running XRay server (http://127.0.0.1:PORT).");
const side = 224;
const limits = { timeout: 60_000 };

// dist/test/open-inference.test.js -> the repository's protos/.
const protos = fileURLToPath(new URL("../../../../protos/", import.meta.url));
const definition = protoLoader.loadSync("inference/grpc_predict_v2.proto", { includeDirs: [protos], keepCase: true, longs: Number, defaults: true });
const loaded = grpc.loadPackageDefinition(definition) as any;
const inference = new loaded.inference.GRPCInferenceService(new URL(server).host, grpc.credentials.createInsecure());
const native = new XRayClient(server, { timeoutMs: 30_000, maxAttempts: 1 });
after(() => inference.close());

function call<T>(method: string, request: object): Promise<T> {
  return new Promise((resolve, reject) =>
    inference[method](request, { deadline: Date.now() + 30_000 }, (error: grpc.ServiceError | null, response: T) =>
      (error ? reject(error) : resolve(response))));
}

function uint8Request(model: string, pixels: Uint8Array, id: string) {
  return {
    model_name: model,
    id,
    inputs: [{ name: "images", datatype: "UINT8", shape: [1, 1, side, side] }],
    raw_input_contents: [Buffer.from(pixels)],
  };
}

function floats(bytes: Buffer): number[] {
  return Array.from(new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)));
}

test("ServerLive, ServerReady and ModelMetadata describe the served model", limits, async () => {
  const model = (await native.getModelInfo()).name;

  assert.equal((await call<{ live: boolean }>("ServerLive", {})).live, true);
  assert.equal((await call<{ ready: boolean }>("ServerReady", {})).ready, true);
  assert.equal((await call<{ ready: boolean }>("ModelReady", { name: model })).ready, true);
  const metadata = await call<any>("ModelMetadata", { name: model });
  assert.equal(metadata.name, model);
  assert.deepEqual(metadata.outputs.map((output: any) => [output.name, output.datatype, output.shape]),
    [["logits", "FP32", [-1, 14]], ["probabilities", "FP32", [-1, 14]]]);
});

test("ModelInfer gives the numbers Classify gives for the same image", limits, async () => {
  const model = (await native.getModelInfo()).name;
  const pixels = new Uint8Array(side * side).map((_, i) => (i * 7) % 256);

  const expected = await native.classifyUint8(pixels, [1, side, side]);
  const response = await call<any>("ModelInfer", uint8Request(model, pixels, "node-1"));

  assert.equal(response.id, "node-1");
  assert.equal(response.model_name, model);
  assert.deepEqual(response.outputs.map((output: any) => output.shape), [[1, 14], [1, 14]]);
  assert.deepEqual(floats(response.raw_output_contents[0]), expected.predictions[0].logits);
  assert.deepEqual(floats(response.raw_output_contents[1]), expected.predictions[0].probabilities);
});

test("an unknown model is NOT_FOUND and a wrong shape INVALID_ARGUMENT", limits, async () => {
  const model = (await native.getModelInfo()).name;
  const pixels = new Uint8Array(side * side);

  await assert.rejects(call("ModelInfer", uint8Request("no-such-model", pixels, "x")),
    (error: grpc.ServiceError) => error.code === grpc.status.NOT_FOUND && error.details.includes("'no-such-model'"));
  const wrong = uint8Request(model, pixels, "y");
  wrong.inputs[0].shape = [1, 1, side, side - 1];
  await assert.rejects(call("ModelInfer", wrong),
    (error: grpc.ServiceError) => error.code === grpc.status.INVALID_ARGUMENT && error.details.includes("shape [1,1,224,223]"));
});

test("ModelStreamInfer answers each request by id; a bad one fails in band and the stream goes on", limits, async () => {
  const model = (await native.getModelInfo()).name;
  const pixels = new Uint8Array(side * side).fill(128);
  const stream = inference.ModelStreamInfer({ deadline: Date.now() + 30_000 });
  const responses = new Map<string, any>();
  const ended = new Promise<void>((resolve, reject) => {
    stream.on("data", (response: any) => responses.set(response.infer_response.id, response));
    stream.on("error", reject);
    stream.on("end", resolve);
  });

  stream.write(uint8Request(model, pixels, "a"));
  stream.write({ ...uint8Request(model, pixels, "bad"), inputs: [{ name: "images", datatype: "INT64", shape: [1, 1, side, side] }] });
  stream.write(uint8Request(model, pixels, "b"));
  stream.end();
  await ended;

  assert.deepEqual([...responses.keys()].sort(), ["a", "b", "bad"]);
  assert.match(responses.get("bad").error_message, /^INVALID_ARGUMENT: .*datatype 'INT64'/);
  assert.equal(responses.get("a").error_message, "");
  assert.deepEqual(floats(responses.get("a").infer_response.raw_output_contents[0]), floats(responses.get("b").infer_response.raw_output_contents[0]));
});
