// The accept.v1.Probe schema at run time, from the descriptor set the Python tests generate
// (tests/support/probe.py writes probe.binpb): no JavaScript code generation at all.
import { readFileSync } from "node:fs";
import { create, createFileRegistry, fromBinary, fromJson, toBinary, toJson } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

export const SERVICE = "accept.v1.Probe";

export function loadProbe(descriptorSetPath) {
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptorSetPath)));
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
