// @upf/shell-sdk: the UPF UI SDK. Plugin UIs import everything from here; the shell shares this
// package with them as a Module Federation singleton.
export * from "./platform.js";
export * from "./hooks.js";
export * from "./mux.js";
// gRPC-Web (createGrpcTransport, useGrpcTransport) is "@upf/shell-sdk/grpc": it brings
// @bufbuild/protobuf and connect, which the shell itself never needs, so they load only with a
// plugin that uses them.
