// Waits until an HTTP URL answers 2xx (the server's /readyz: model loaded), or fails after a timeout.
// Usage: node wait-ready.mjs URL [SECONDS=120]
const [url, seconds = "120"] = process.argv.slice(2);
const until = Date.now() + Number(seconds) * 1000;
while (Date.now() < until) {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
    if (response.ok) process.exit(0);
  } catch {
    // Not listening yet.
  }
  await new Promise((resolve) => setTimeout(resolve, 250));
}
console.error(`${url} was not ready after ${seconds} s`);
process.exit(1);
