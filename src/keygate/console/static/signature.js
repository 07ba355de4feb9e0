/* Signature helper: HMAC-SHA256 with WebCrypto, in the browser only. The inputs have no name and the
   form is never submitted, so nothing typed here leaves the page. */
"use strict";

function shellQuote(value) {
  return "'" + String(value).replace(/'/g, "'\\''") + "'";
}

async function hmacHex(secret, message) {
  const enc = new TextEncoder();
  const key = await crypto.subtle.importKey("raw", enc.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = await crypto.subtle.sign("HMAC", key, enc.encode(message));
  return Array.from(new Uint8Array(mac), (b) => b.toString(16).padStart(2, "0")).join("");
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("signature-form");
  if (!form) return;
  const field = (id) => document.getElementById(id);
  const secret = field("sig-secret");
  const nonce = field("sig-nonce");
  const user = field("sig-user");
  const key = field("sig-key");
  const out = field("sig-signature");
  const headers = field("sig-headers");
  const curl = field("sig-curl");
  const status = field("sig-status");
  const endpoint = window.location.origin + form.dataset.apiPrefix + "/AP/AuthenticateUser";

  form.addEventListener("submit", (event) => event.preventDefault());
  if (!window.crypto || !crypto.subtle) {
    field("sig-unavailable").hidden = false;
    return;
  }
  if (!nonce.value) nonce.value = String(Date.now());

  let generation = 0;
  async function update() {
    const mine = ++generation;
    const values = [secret.value, nonce.value.trim(), user.value.trim(), key.value.trim()];
    if (values.some((v) => !v)) {
      out.textContent = "";
      headers.textContent = "";
      curl.textContent = "";
      status.textContent = "Fill in all four fields.";
      return;
    }
    const [s, n, u, k] = values;
    const signature = await hmacHex(s, n + u + k);
    if (mine !== generation) return;
    out.textContent = signature;
    headers.textContent = `APIKey: ${k}\nSignature: ${signature}\nUserId: ${u}\nNonce: ${n}`;
    curl.textContent = [
      `curl -X POST ${shellQuote(endpoint)}`,
      `  -H ${shellQuote("APIKey: " + k)}`,
      `  -H ${shellQuote("Signature: " + signature)}`,
      `  -H ${shellQuote("UserId: " + u)}`,
      `  -H ${shellQuote("Nonce: " + n)}`,
    ].join(" \\\n");
    status.textContent = "Signature computed for message " + n + u + k + ".";
  }

  [secret, nonce, user, key].forEach((input) => input.addEventListener("input", update));
  field("sig-new-nonce").addEventListener("click", () => {
    nonce.value = String(Date.now());
    update();
  });
  field("sig-show").addEventListener("change", (event) => {
    secret.type = event.target.checked ? "text" : "password";
  });
  update();
});
