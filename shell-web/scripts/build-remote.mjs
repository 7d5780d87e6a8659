#!/usr/bin/env node
// Builds a plugin's UI as a Module Federation 2.0 remote with the shell's own toolchain, so a plugin
// needs no bundler setup of its own:
//
//   node shell-web/scripts/build-remote.mjs --name orders_plugin --src plugins/orders/ui \
//        --expose ./OrderDashboard=src/OrderDashboard.tsx --expose ./OrderWidget=src/OrderWidget.tsx \
//        --out plugins/orders/ui/dist [--define KEY=VALUE]
//
// The remote shares react, react-dom and @upf/shell-sdk with the shell as singletons and bundles no
// copy of them (import: false): it only ever runs inside the shell. Its files load relative to
// remoteEntry.js (publicPath auto), so the gateway can serve them under any path.
import { createRsbuild } from "@rsbuild/core";
import { pluginReact } from "@rsbuild/plugin-react";
import { pluginModuleFederation } from "@module-federation/rsbuild-plugin";
import { parseArgs } from "node:util";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const shellWeb = path.resolve(here, "..");
const require = createRequire(path.join(shellWeb, "package.json"));
const own = (name) => path.dirname(require.resolve(`${name}/package.json`));

const { values } = parseArgs({
  options: {
    name: { type: "string" },
    src: { type: "string" },
    out: { type: "string" },
    expose: { type: "string", multiple: true, default: [] },
    define: { type: "string", multiple: true, default: [] },
  },
});
if (!values.name || !values.src || !values.out || values.expose.length === 0) {
  console.error("usage: build-remote.mjs --name NAME --src DIR --out DIR --expose ./Name=file [--define K=V]");
  process.exit(2);
}
const src = path.resolve(values.src);
const exposes = Object.fromEntries(
  values.expose.map((e) => {
    const [key, file] = e.split("=");
    return [key, path.resolve(src, file)];
  }),
);
// process.env as a whole: an unset variable reads as undefined instead of failing in the browser.
const env = Object.fromEntries(
  values.define.map((d) => {
    const [key, ...rest] = d.split("=");
    return [key, rest.join("=")];
  }),
);
const define = { "process.env": JSON.stringify(env) };
const shared = {
  react: { singleton: true, requiredVersion: "^19.0.0", import: false },
  "react-dom": { singleton: true, requiredVersion: "^19.0.0", import: false },
  "@upf/shell-sdk": { singleton: true, requiredVersion: "^0.1.0", import: false },
  "@upf/shell-sdk/grpc": { singleton: true, requiredVersion: "^0.1.0", import: false },
  // Generated code's runtime: the shell's copy when it has one (it does), else the remote's own.
  "@bufbuild/protobuf": { singleton: true, requiredVersion: "^2.0.0" },
  "@bufbuild/protobuf/codegenv2": { singleton: true, requiredVersion: "^2.0.0" },
  "@connectrpc/connect": { singleton: true, requiredVersion: "^2.0.0" },
};

const rsbuild = await createRsbuild({
  cwd: src,
  rsbuildConfig: {
    plugins: [
      pluginReact(),
      pluginModuleFederation({ name: values.name, filename: "remoteEntry.js", exposes, shared, dts: false }),
    ],
    source: { entry: { index: Object.values(exposes)[0] }, define },
    resolve: {
      alias: { react: own("react"), "react-dom": own("react-dom"), "@upf/shell-sdk$": path.join(shellWeb, "sdk"),
        "@upf/shell-sdk/grpc": path.join(shellWeb, "sdk", "dist", "grpc.js"),
      },
    },
    tools: {
      htmlPlugin: false,
      rspack: { resolve: { modules: ["node_modules", path.join(shellWeb, "node_modules")] } },
    },
    output: {
      distPath: { root: path.resolve(values.out) },
      assetPrefix: "auto",
      filenameHash: true,
      cleanDistPath: true,
      legalComments: "none",
    },
    performance: { chunkSplit: { strategy: "all-in-one" } },
  },
});
await rsbuild.build();
