{
  # qnat's TUN addon: built by `npm install` (package.json "install": node-gyp rebuild --directory native),
  # output native/build/Release/qnat_tun.node, loaded by src/io/tun.ts.
  "targets": [
    {
      "target_name": "qnat_tun",
      "sources": ["tun.cc"],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags!": ["-O3"],
      "cflags_cc!": ["-O3", "-std=gnu++17", "-std=gnu++20"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "cflags_cc": ["-O2", "-std=c++17", "-Wall", "-Wextra"]
    }
  ]
}
