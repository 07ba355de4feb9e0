/* Signature v2 helper: RFC 9421 signatures (hmac-sha256 or ed25519) and RFC 9530 Content-Digest, computed
   with WebCrypto in the browser only. Nothing typed here is sent anywhere. */
"use strict";

(() => {
  const enc = new TextEncoder();

  function b64(bytes) {
    let text = "";
    new Uint8Array(bytes).forEach((b) => { text += String.fromCharCode(b); });
    return btoa(text);
  }

  function unb64(text) {
    const clean = text.replace(/\s+/g, "").replace(/-/g, "+").replace(/_/g, "/");
    const padded = clean + "=".repeat((4 - (clean.length % 4)) % 4);
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  }

  function quote(value) { // an RFC 8941 string
    if (!/^[\x20-\x7e]*$/.test(value)) throw new Error("values must be printable ASCII");
    return '"' + value.replace(/\\/g, "\\\\").replace(/"/g, '\\"') + '"';
  }

  function shellQuote(value) {
    return "'" + String(value).replace(/'/g, "'\\''") + "'";
  }

  const PKCS8_ED25519 = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

  function pkcs8(text) {
    const pem = text.match(/-----BEGIN PRIVATE KEY-----([\s\S]*?)-----END PRIVATE KEY-----/);
    if (pem) return unb64(pem[1]);
    const raw = unb64(text.trim());
    if (raw.length !== 32) throw new Error("an Ed25519 private key is 32 bytes (or PKCS#8 PEM)");
    return Uint8Array.from([...PKCS8_ED25519, ...raw]);
  }

  async function sign(alg, secret, privateKey, base) {
    if (alg === "hmac-sha256") {
      const key = await crypto.subtle.importKey("raw", enc.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
      return crypto.subtle.sign("HMAC", key, base);
    }
    const key = await crypto.subtle.importKey("pkcs8", pkcs8(privateKey), { name: "Ed25519" }, false, ["sign"]);
    return crypto.subtle.sign("Ed25519", key, base);
  }

  /* The headers of one request, as keygate's SDK makes them (label kg). */
  async function signRequest({ method, target, body, alg, keyid, secret, privateKey, created, nonce }) {
    const cut = target.indexOf("?");
    const path = (cut < 0 ? target : target.slice(0, cut)) || "/";
    const query = cut < 0 ? "" : target.slice(cut + 1);
    const bytes = enc.encode(body);
    const headers = {};
    const components = [["@method", method], ["@path", path], ["@query", "?" + query]];
    if (bytes.length) {
      headers["Content-Digest"] = "sha-256=:" + b64(await crypto.subtle.digest("SHA-256", bytes)) + ":";
      components.push(["content-digest", headers["Content-Digest"]]);
    }
    const params = "(" + components.map(([name]) => quote(name)).join(" ") + ")"
      + ";created=" + created + ";nonce=" + quote(nonce) + ";keyid=" + quote(keyid) + ";alg=" + quote(alg);
    const base = components.map(([name, value]) => quote(name) + ": " + value).concat(['"@signature-params": ' + params]).join("\n");
    const signature = await sign(alg, secret, privateKey, enc.encode(base));
    headers["Signature-Input"] = "kg=" + params;
    headers["Signature"] = "kg=:" + b64(signature) + ":";
    return { base, headers, path, bytes };
  }

  function randomValue() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("v2-form");
    if (!form) return;
    const field = (id) => document.getElementById(id);
    const status = field("v2-status");
    form.addEventListener("submit", (event) => event.preventDefault());
    if (!window.crypto || !crypto.subtle) {
      status.textContent = "This browser cannot compute signatures here: WebCrypto needs a secure page (HTTPS or localhost).";
      return;
    }
    const inputs = ["v2-method", "v2-target", "v2-body", "v2-alg", "v2-private", "v2-created", "v2-once", "sig-secret", "sig-key"].map(field);
    const now = () => { field("v2-created").value = String(Math.floor(Date.now() / 1000)); };
    if (!field("v2-created").value) now();
    if (!field("v2-once").value) field("v2-once").value = randomValue();

    let generation = 0;
    async function update() {
      const mine = ++generation;
      const alg = field("v2-alg").value;
      field("v2-private-row").hidden = alg !== "ed25519";
      const request = {
        method: field("v2-method").value, target: field("v2-target").value.trim(), body: field("v2-body").value, alg,
        keyid: field("sig-key").value.trim(), secret: field("sig-secret").value, privateKey: field("v2-private").value,
        created: field("v2-created").value.trim(), nonce: field("v2-once").value.trim(),
      };
      const clear = (message) => {
        ["v2-base", "v2-headers", "v2-curl"].forEach((id) => { field(id).textContent = ""; });
        status.textContent = message;
      };
      if (!request.keyid || (alg === "hmac-sha256" ? !request.secret : !request.privateKey.trim())) {
        clear("Fill in the API key and its secret (or private key) above.");
        return;
      }
      if (!/^\d{1,15}$/.test(request.created) || !request.nonce || !request.target.startsWith("/")) {
        clear("The path must start with /, created is a Unix time in seconds, and the once-only value must not be empty.");
        return;
      }
      let signed;
      try {
        signed = await signRequest(request);
      } catch (error) {
        if (mine === generation) clear("Cannot sign: " + (error && error.message ? error.message : error));
        return;
      }
      if (mine !== generation) return;
      const lines = Object.entries(signed.headers).map(([name, value]) => name + ": " + value);
      field("v2-base").textContent = signed.base;
      field("v2-headers").textContent = lines.join("\n");
      const url = window.location.origin + request.target;
      const curl = ["curl -X " + request.method + " " + shellQuote(url)];
      if (signed.bytes.length) curl.push("  -H " + shellQuote("Content-Type: application/json"));
      lines.forEach((line) => curl.push("  -H " + shellQuote(line)));
      if (signed.bytes.length) curl.push("  --data-binary " + shellQuote(request.body));
      field("v2-curl").textContent = curl.join(" \\\n");
      status.textContent = "Signature v2 computed (" + alg + "); send it within a few seconds of created.";
    }

    inputs.forEach((input) => input.addEventListener(input.tagName === "SELECT" ? "change" : "input", update));
    field("v2-now").addEventListener("click", () => { now(); update(); });
    field("v2-new-once").addEventListener("click", () => { field("v2-once").value = randomValue(); update(); });
    update();
  });
})();
