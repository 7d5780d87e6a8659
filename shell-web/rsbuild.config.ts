// The shell: a Module Federation 2.0 host with no remotes at build time. Plugins are found at run
// time through /api/manifests and registered with registerRemotes (src/loader.ts).
import { defineConfig } from "@rsbuild/core";
import { pluginReact } from "@rsbuild/plugin-react";
import { pluginModuleFederation } from "@module-federation/rsbuild-plugin";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const own = (name: string) => path.dirname(require.resolve(`${name}/package.json`));

export const shared = {
  // One React, one SDK for the shell and every plugin: the SDK's contexts only work as one instance.
  react: { singleton: true, requiredVersion: "^19.0.0" },
  "react-dom": { singleton: true, requiredVersion: "^19.0.0" },
  "@upf/shell-sdk": { singleton: true, requiredVersion: "^0.1.0" },
  // Not imported by the shell: lazy shared chunks, fetched only when a plugin asks for them. A
  // plugin's generated code and the SDK's transport then use one protobuf runtime.
  "@upf/shell-sdk/grpc": { singleton: true, requiredVersion: "^0.1.0" },
  "@bufbuild/protobuf": { singleton: true, requiredVersion: "^2.0.0" },
  "@bufbuild/protobuf/codegenv2": { singleton: true, requiredVersion: "^2.0.0" },
  "@connectrpc/connect": { singleton: true, requiredVersion: "^2.0.0" },
};

export default defineConfig({
  plugins: [
    pluginReact(),
    pluginModuleFederation({
      name: "upf_shell",
      remotes: {},
      shared,
      // Remote entries are fetched only when a plugin's page or widget is shown: an unreachable
      // plugin never holds up the shell's start.
      shareStrategy: "loaded-first",
      dts: false,
    }),
  ],
  resolve: {
    // The SDK is linked from ./sdk: its imports of react must land on the shell's copy.
    alias: { react: own("react"), "react-dom": own("react-dom") },
  },
  html: {
    title: "UPF",
    template: "./src/index.html",
  },
  output: {
    distPath: { root: "dist" },
    // Hashed names (cached as immutable by the gateway) for everything but index.html.
    filenameHash: true,
    legalComments: "none",
  },
  // `npm run dev`: the shell with hot reload on :3000, the API and plugin UIs from a gateway on :8080.
  server: {
    proxy: {
      "/api": { target: "http://127.0.0.1:8080", ws: true },
      "/plugins": { target: "http://127.0.0.1:8080" },
    },
  },
  performance: { chunkSplit: { strategy: "split-by-experience" } },
});
