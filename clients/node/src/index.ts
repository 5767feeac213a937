export { XRayClient, findingNames, serverUrl, type XRayClientOptions } from "./client.js";
export * from "./gen/xray/v1/classifier_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";
