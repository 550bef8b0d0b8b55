#!/usr/bin/env node
// The npm reference library of Standard Webhooks (standardwebhooks 1.1.1)
// for phigate's end-to-end tests (test_webhooks*.py): signs messages, and
// verifies headers made by phigate, as an independent implementation.
//
// Usage: PHG_NPM_DIR=<folder with node_modules> node sign.js < ops.json
// stdin: a JSON array of operations; stdout: a JSON array of results, one
// per operation, in order.
//   {"op":"version"}
//       -> {"version":"1.1.1"}
//   {"op":"sign","secret":"whsec_...","id":"msg_...","timestamp":<unix s>,"payload":"..."}
//       -> {"webhook-id":..., "webhook-timestamp":"<s>", "webhook-signature":"v1,..."}
//   {"op":"verify","secret":"whsec_...","headers":{...},"payload":"...","now":<unix s>}
//       -> {"ok":true} or {"ok":false,"error":"<message>"}
// Only canonical inputs (valid UTF-8 payloads, digits-only timestamps): the
// library decodes payloads as UTF-8 and parseInt()s timestamps (research
// webhooks.md 2.2). verify() has no clock parameter: Date.now is replaced
// for the call. Payloads are verified with {jsonParse:false}.
"use strict";

const fs = require("fs");
const path = require("path");

const dir = process.env.PHG_NPM_DIR;
if (!dir) {
  process.stderr.write("sign.js: PHG_NPM_DIR is not set\n");
  process.exit(2);
}
const modDir = path.join(dir, "node_modules", "standardwebhooks");
const { Webhook } = require(modDir);
const version = JSON.parse(fs.readFileSync(path.join(modDir, "package.json"), "utf8")).version;

function run(op) {
  switch (op.op) {
    case "version":
      return { version };
    case "sign": {
      const wh = new Webhook(op.secret);
      const sig = wh.sign(op.id, new Date(op.timestamp * 1000), op.payload);
      return {
        "webhook-id": op.id,
        "webhook-timestamp": String(op.timestamp),
        "webhook-signature": sig,
      };
    }
    case "verify": {
      const wh = new Webhook(op.secret);
      const realNow = Date.now;
      if (typeof op.now === "number") Date.now = () => op.now * 1000;
      try {
        wh.verify(op.payload, op.headers, { jsonParse: false });
        return { ok: true };
      } catch (e) {
        return { ok: false, error: String(e && e.message ? e.message : e) };
      } finally {
        Date.now = realNow;
      }
    }
    default:
      throw new Error("unknown op " + JSON.stringify(op.op));
  }
}

const input = fs.readFileSync(0, "utf8");
const ops = JSON.parse(input);
process.stdout.write(JSON.stringify(ops.map(run)) + "\n");
