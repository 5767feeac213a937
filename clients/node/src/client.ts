// Typed Node client for XRay Serving: xray.v1.Classifier over gRPC (HTTP/2), on Connect's gRPC transport.
// Every call has a deadline; UNAVAILABLE and RESOURCE_EXHAUSTED are retried with exponential backoff
// (unary calls only); several server addresses are used round-robin, one call each in turn.
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { endianness } from "node:os";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  Classifier,
  ClassifyRequestSchema,
  DataType,
  EncodedImagesSchema,
  GetModelInfoRequestSchema,
  TensorSchema,
  type ClassifyRequest,
  type ClassifyResponse,
  type ModelInfo,
  type Prediction,
} from "./gen/xray/v1/classifier_pb.js";

export interface XRayClientOptions {
  /** Deadline of each call, in milliseconds (default 30000). */
  timeoutMs?: number;
  /** Attempts per unary call, the first included (default 4); 1 disables retries. */
  maxAttempts?: number;
  /** First retry backoff in milliseconds (default 100), doubling up to 2000. */
  initialBackoffMs?: number;
  /** Largest message sent or received, in bytes (default 64 MiB, as the server). */
  maxMessageBytes?: number;
  /** PEM file of the CA that signs the server's certificate, for https servers the system does not trust. */
  caPath?: string;
  /** PEM files of this client's certificate and key, for servers that require mutual TLS. */
  certPath?: string;
  keyPath?: string;
  /** Bearer token (JWT) sent as `authorization: Bearer TOKEN` on every call. */
  token?: string;
  /** API key sent as `x-api-key` on every call. */
  apiKey?: string;
}

const retryable = new Set([Code.Unavailable, Code.ResourceExhausted]);

export class XRayClient {
  readonly addresses: readonly string[];
  private readonly clients: Client<typeof Classifier>[];
  private readonly timeoutMs: number;
  private readonly maxAttempts: number;
  private readonly initialBackoffMs: number;
  private next = 0;

  /**
   * @param addresses one server or several, called round-robin: `host:port`, `http://host:port`, `https://host:port`
   * or `dns:///host:port` (see {@link serverUrl}).
   */
  constructor(addresses: string | readonly string[], options: XRayClientOptions = {}) {
    this.addresses = (typeof addresses === "string" ? [addresses] : [...addresses]).map(serverUrl);
    if (this.addresses.length === 0) throw new Error("At least one server address is needed.");
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.maxAttempts = Math.max(1, options.maxAttempts ?? 4);
    this.initialBackoffMs = options.initialBackoffMs ?? 100;
    const maxBytes = options.maxMessageBytes ?? 64 * 1024 * 1024;
    if ((options.caPath || options.certPath) && this.addresses.some((address) => !address.startsWith("https://"))) {
      throw new Error("A CA or client certificate needs https:// server addresses.");
    }
    const tls = tlsOptions(options);
    const interceptors = credentials(options);
    this.clients = this.addresses.map((baseUrl) =>
      createClient(
        Classifier,
        createGrpcTransport({ baseUrl, readMaxBytes: maxBytes, writeMaxBytes: maxBytes, nodeOptions: tls, interceptors }),
      ),
    );
  }

  /** PNG or JPEG files, one image each; the server decodes and preprocesses them. */
  async classifyFiles(paths: readonly string[]): Promise<ClassifyResponse> {
    return this.classifyEncoded(await Promise.all(paths.map((path) => readFile(path))));
  }

  /** Encoded PNG or JPEG bytes, one image each. */
  classifyEncoded(images: readonly Uint8Array[]): Promise<ClassifyResponse> {
    return this.classify(
      create(ClassifyRequestSchema, {
        input: { case: "encoded", value: create(EncodedImagesSchema, { images: [...images] }) },
      }),
    );
  }

  /** Normalised float32 pixels, shape [C,H,W] or [N,C,H,W]. */
  classifyFloat32(data: Float32Array, shape: readonly number[]): Promise<ClassifyResponse> {
    return this.classify(tensorRequest(bytesOf(data), DataType.FLOAT32, shape));
  }

  /** 0..255 pixels, shape [C,H,W] or [N,C,H,W]; the server normalises them. */
  classifyUint8(data: Uint8Array, shape: readonly number[]): Promise<ClassifyResponse> {
    return this.classify(tensorRequest(data, DataType.UINT8, shape));
  }

  classify(request: ClassifyRequest): Promise<ClassifyResponse> {
    return this.withRetries((client, signal) => client.classify(request, { timeoutMs: this.timeoutMs, signal }));
  }

  getModelInfo(): Promise<ModelInfo> {
    return this.withRetries((client, signal) =>
      client.getModelInfo(create(GetModelInfoRequestSchema), { timeoutMs: this.timeoutMs, signal }),
    );
  }

  /**
   * Many requests on one ClassifyStream: responses arrive as each completes, in any order, matched by
   * request_id (assigned here when empty). A failed request comes back with `error` set; the stream goes on.
   * The deadline covers the whole stream. Not retried.
   */
  classifyStream(requests: Iterable<ClassifyRequest> | AsyncIterable<ClassifyRequest>, timeoutMs = this.timeoutMs): AsyncIterable<ClassifyResponse> {
    let id = 0;
    async function* withIds() {
      for await (const request of requests) {
        if (!request.requestId) request.requestId = `n${++id}`;
        yield request;
      }
    }
    return this.pick().classifyStream(withIds(), { timeoutMs });
  }

  private pick(): Client<typeof Classifier> {
    const client = this.clients[this.next % this.clients.length];
    this.next = (this.next + 1) % this.clients.length;
    return client;
  }

  private async withRetries<T>(call: (client: Client<typeof Classifier>, signal?: AbortSignal) => Promise<T>): Promise<T> {
    let backoff = this.initialBackoffMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await call(this.pick());
      } catch (error) {
        const code = ConnectError.from(error).code;
        if (attempt >= this.maxAttempts || !retryable.has(code)) throw error;
        // Full jitter, as gRPC's own retry policy: a random wait up to the current backoff.
        await new Promise((resolve) => setTimeout(resolve, Math.random() * backoff));
        backoff = Math.min(backoff * 2, 2_000);
      }
    }
  }
}

/**
 * The URL to dial for an address as users type it: `http://host:port` and `https://host:port` as they are, `host:port`
 * (`localhost:5051`, `10.0.0.5:5051`, `[::1]:5051`) as `http://host:port`, and `dns:///host:port` as `http://host:port`
 * (Node resolves the name; give several addresses to spread calls). Throws an Error naming what is wrong otherwise.
 */
export function serverUrl(address: string): string {
  const bad = (why: string) =>
    new Error(`'${address}' is not a server address: ${why}; use host:port, http://host:port, https://host:port or dns:///host:port`);
  const text = address.trim();
  if (text === "") throw bad("it is empty");
  let url: URL;
  if (/^dns:/i.test(text)) {
    if (!/^dns:\/\/\//i.test(text)) throw bad("a DNS name is written dns:///host:port");
    url = parse(`http://${text.slice("dns:///".length)}`);
  } else if (!text.includes("://")) {
    url = parse(`http://${text}`);
  } else {
    const scheme = text.slice(0, text.indexOf("://")).toLowerCase();
    if (scheme !== "http" && scheme !== "https") throw bad(`'${scheme}://' is not a scheme the client speaks`);
    url = parse(text);
    if (url.pathname !== "/" || url.search || url.hash) throw bad(`gRPC servers take no path ('${url.pathname}')`);
    return url.origin;
  }
  if (url.port === "") throw bad("it has no port");
  if (url.pathname !== "/" || url.search || url.hash || url.username) throw bad("it does not name a host and port");
  return url.origin;

  function parse(candidate: string): URL {
    try {
      return new URL(candidate);
    } catch {
      throw bad("it is not host:port or a valid URL");
    }
  }
}

/** TLS trust and client certificate for the HTTP/2 session, read once; undefined when none is given. */
function tlsOptions(options: XRayClientOptions): { ca?: Buffer; cert?: Buffer; key?: Buffer } | undefined {
  if (!options.caPath && !options.certPath) return undefined;
  return {
    ca: options.caPath ? readFileSync(options.caPath) : undefined,
    cert: options.certPath ? readFileSync(options.certPath) : undefined,
    key: options.certPath ? readFileSync(options.keyPath ?? options.certPath) : undefined,
  };
}

/** Adds the token and API key to every call's headers. */
function credentials(options: XRayClientOptions): Interceptor[] {
  const { token, apiKey } = options;
  if (!token && !apiKey) return [];
  return [
    (next) => (request) => {
      if (token) request.header.set("authorization", `Bearer ${token}`);
      if (apiKey) request.header.set("x-api-key", apiKey);
      return next(request);
    },
  ];
}

/** The findings over threshold of each prediction, by class name: what a caller usually wants. */
export function findingNames(prediction: Prediction): string[] {
  return prediction.findings.map((finding) => finding.name);
}

function tensorRequest(data: Uint8Array, dtype: DataType, shape: readonly number[]): ClassifyRequest {
  return create(ClassifyRequestSchema, {
    input: { case: "tensor", value: create(TensorSchema, { shape: shape.map((d) => BigInt(d)), dtype, data }) },
  });
}

/** The wire format is little-endian; so are x64 and arm64, where this views the floats' own bytes. */
function bytesOf(data: Float32Array): Uint8Array {
  if (endianness() !== "LE") throw new Error("The tensor wire format is little-endian.");
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}
