// The example as users run it (node dist/src/example.js), with each mistake a new user makes: one line, the documented
// exit code (README, "Exit codes"), never a stack trace. Needs XRAY_SERVER; XRAY_METRICS (the server's HTTP/1.1 port)
// for the wrong-port hint (test-with-server.sh sets both).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { grayPng } from "./png.js";

const server = process.env.XRAY_SERVER;
if (!server) throw new Error("Set XRAY_SERVER to a running XRay server (http://127.0.0.1:PORT).");
const example = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "example.js");
const limits = { timeout: 60_000 };

interface Run {
  exit: number;
  stdout: string;
  stderr: string;
}

function run(...args: string[]): Promise<Run> {
  const env = { ...process.env };
  delete env.XRAY_SERVER;
  return new Promise((resolve) => {
    execFile(process.execPath, [example, ...args], { env, timeout: 50_000 }, (error, stdout, stderr) => {
      resolve({ exit: error ? (typeof error.code === "number" ? error.code : -1) : 0, stdout, stderr });
    });
  });
}

function assertOneLineError(result: Run, exit: number, text: string | RegExp) {
  assert.equal(result.exit, exit, result.stderr);
  assert.doesNotMatch(result.stderr, /\n\s+at /);
  const lines = result.stderr.trim().split("\n");
  assert.equal(lines.length, 1, result.stderr);
  assert.match(lines[0], /^error: /);
  if (typeof text === "string") assert.ok(lines[0].includes(text), lines[0]);
  else assert.match(lines[0], text);
}

test("--help prints the usage and the exit codes, exit 0", limits, async () => {
  for (const flag of ["--help", "-h"]) {
    const result = await run(flag);
    assert.equal(result.exit, 0, result.stderr);
    assert.match(result.stdout, /^usage: example\.js/);
    assert.match(result.stdout, /Exit codes: 0 ok/);
  }
});

test("usage mistakes exit 2 with one line", limits, async () => {
  assertOneLineError(await run(), 2, "no files given");
  assertOneLineError(await run("--bogus", "x.png"), 2, "unknown option '--bogus'");
  assertOneLineError(await run("x.png", "--server"), 2, "--server needs a value");
  assertOneLineError(await run("--server", "localhost:http", "x.png"), 2, "'localhost:http' is not a server address");
});

test("a missing file exits 3 naming it, before any call", limits, async () => {
  assertOneLineError(await run("--server", "127.0.0.1:1", "/nonexistent/chest.png"), 3, "/nonexistent/chest.png: no such file");
});

test("localhost:PORT reaches the server; an unreachable one exits 4", limits, async () => {
  const folder = mkdtempSync(join(tmpdir(), "xray-example-"));
  try {
    const image = join(folder, "chest.png");
    writeFileSync(image, grayPng(256, 256));
    const port = new URL(server).port;

    const ok = await run("--server", `localhost:${port}`, image);
    const nowhere = await run("--server", "127.0.0.1:1", image);

    assert.equal(ok.exit, 0, ok.stderr);
    assert.ok(ok.stdout.startsWith(`${image}: `), ok.stdout);
    assert.match(ok.stdout, /^model /m);
    assertOneLineError(nowhere, 4, "cannot reach an XRay server at 127.0.0.1:1");
  } finally {
    rmSync(folder, { recursive: true });
  }
});

test("a file the server refuses exits 5", limits, async () => {
  const folder = mkdtempSync(join(tmpdir(), "xray-example-"));
  try {
    const notes = join(folder, "notes.png");
    writeFileSync(notes, "not an image");

    assertOneLineError(await run("--server", server, notes), 5, "the server refused the request (InvalidArgument)");
  } finally {
    rmSync(folder, { recursive: true });
  }
});

test("the metrics port (HTTP/1.1) gets a hint, exit 4", { ...limits, skip: process.env.XRAY_METRICS ? false : "XRAY_METRICS not set" }, async () => {
  const metrics = new URL(process.env.XRAY_METRICS!).host;
  const image = join(tmpdir(), `xray-example-${process.pid}.png`);
  writeFileSync(image, grayPng(64, 64));
  try {
    assertOneLineError(await run("--server", metrics, image), 4, "is it the metrics port?");
  } finally {
    rmSync(image);
  }
});
