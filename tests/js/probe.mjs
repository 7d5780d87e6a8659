// The accept.v1.Probe schema at run time, from the descriptor set the Python tests generate
// (tests/support/probe.py writes probe.binpb): no JavaScript code generation at all. loadRegistry
// and findMethod do the same for any descriptor set (interop.mjs: grpc.testing.TestService).
import { readFileSync } from "node:fs";
import { create, createFileRegistry, fromBinary, fromJson, toBinary, toJson } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

export const SERVICE = "accept.v1.Probe";

/** The schemas of a descriptor set (protoc --include_imports --descriptor_set_out). */
export function loadRegistry(descriptorSetPath) {
  return createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptorSetPath)));
}

/** A method of a service the descriptor set describes. */
export function findMethod(registry, serviceName, methodName) {
  const method = registry.getService(serviceName)?.methods.find((m) => m.name === methodName);
  if (!method) throw new Error(`the descriptor set has no method ${serviceName}/${methodName}`);
  return method;
}

/** {name-bin: base64 of the raw bytes} as {name-bin: Uint8Array}, the form the client adapters take. */
export function binaryHeadersOf(spec) {
  return Object.fromEntries(
    Object.entries(spec ?? {}).map(([key, value]) => [key, new Uint8Array(Buffer.from(value, "base64"))]),
  );
}

export function loadProbe(descriptorSetPath) {
  const registry = loadRegistry(descriptorSetPath);
  const service = registry.getService(SERVICE);
  const CallRequest = registry.getMessage("accept.v1.CallRequest");
  const CallReply = registry.getMessage("accept.v1.CallReply");
  const Key = registry.getMessage("accept.v1.Key");
  if (!service || !CallRequest || !CallReply || !Key) {
    throw new Error(`${descriptorSetPath} does not describe ${SERVICE}`);
  }
  return { registry, service, CallRequest, CallReply, Key };
}

/**
 * The method a call spec names. Methods the schema does not have (an unknown method, a service
 * the gateway cannot reach) are made up with CallRequest in and CallReply out, as a client built
 * from an older or different schema would send them.
 */
export function resolveMethod(probe, serviceName, methodName, kind) {
  if (serviceName === SERVICE) {
    const known = probe.service.methods.find((m) => m.name === methodName);
    if (known) return known;
  }
  const template = probe.service.methods.find((m) => m.name === (kind === "server_streaming" ? "ServerStream" : "Unary"));
  const parent = { ...probe.service, typeName: serviceName, name: serviceName.split(".").pop(), methods: [], method: {} };
  const method = { ...template, name: methodName, localName: methodName[0].toLowerCase() + methodName.slice(1), parent };
  parent.methods.push(method);
  parent.method[method.localName] = method;
  return method;
}

export function kindOf(method) {
  if (method.methodKind === "unary") return "unary";
  if (method.methodKind === "server_streaming") return "server_streaming";
  throw new Error(`gRPC-Web over HTTP/1.1 cannot call ${method.methodKind} method ${method.name}`);
}

export { create, fromBinary, fromJson, toBinary, toJson };
