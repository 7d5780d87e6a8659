// @upf/shell-sdk: the UPF UI SDK. Plugin UIs import everything from here; the shell shares this
// package with them as a Module Federation singleton.
export * from "./platform.js";
export * from "./hooks.js";
export * from "./transport.js";
export * from "./mux.js";
export { useGrpcTransport } from "./grpc.js";
